"""Command-line tool over the Management and Frontend RPCs."""
