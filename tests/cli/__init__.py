"""The ``bulletin`` command run as real processes (a package, so that its conftest keeps its
own module name)."""
