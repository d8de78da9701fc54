"""Repeatable performance runs that print figures. Not part of the test gate."""
