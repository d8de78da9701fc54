"""Browser tests: Bulletin served in a subprocess, driven through headless Chromium (a package,
so that its conftest keeps its own module name)."""
