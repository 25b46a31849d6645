"""Demo participants for txc: two banks (each with its own PostgreSQL database) and a
transfer client that moves money between them atomically with a global transaction."""
