"""Maintenance: the routines that keep backups trustworthy without anyone watching.

Owns: the daily, weekly and monthly routines, the selftest, notifications and the
verification rotation. Composes the ``backup`` library's functions; holds policy,
not mechanism. Returns report records; never prints (the tasks module renders).
"""
