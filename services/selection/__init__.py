"""Selection service: decides which models answer a query and learns from feedback."""
