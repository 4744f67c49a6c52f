"""Fuzzing every parser with a memory and CPU budget per input, and split-feed equivalence.

`budget.py` holds the shared measure (CPU with gc off, then the tracemalloc peak), the
drain loop, and the hostile building blocks; each parser has its own test module.
"""
