"""replytime: how fast do sales reps answer new leads by email."""

__version__ = "0.1.0"
