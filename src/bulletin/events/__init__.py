"""Events in: event types an organization defines, and the events that become notifications."""
