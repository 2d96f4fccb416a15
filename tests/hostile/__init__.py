"""Hostile and broken input (issue 4): confinement, clean failures, atomicity, bounded work."""
