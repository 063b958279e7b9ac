"""Model families. Importing this package registers every family's names."""
