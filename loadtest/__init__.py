"""ghz load tests of the frontend (`make loadtest`)."""
