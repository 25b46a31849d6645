"""Operator recovery tooling behind `txc recover`, `txc audit`, `txc raft log|state`,
`txc backup` and `txc restore` (issue 4, "Recovery tooling").

Every module here is plain synchronous code over SQLAlchemy (psycopg) and httpx: the
commands run against databases and nodes that may be half broken, and they must stay
simple to reason about. Only `restore` and `recover --apply` write anything.
"""
