"""The job RQ's worker runs in tests/frameworks.rs (imported by name: `tasks.triple_plus_one`)."""


def triple_plus_one(i):
    return i * 3 + 1
