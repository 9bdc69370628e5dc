"""A test-only app: a deal between two accounts, the row of two logins."""
