"""Run history in a database: the archive, its schema and the history questions."""
