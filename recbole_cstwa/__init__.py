"""recbole-cstwa: CSTWA and multi-task post-click conversion-rate models as a RecBole plugin."""

__version__ = "0.1.0"
