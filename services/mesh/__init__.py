"""The local mesh: every service as a local process, with the digits example models.

`__main__` is the launcher (`make run`); `specs` says what it starts, `supervisor`
keeps it running and drains it, `application` registers the digits application,
`digits` trains the example models, `certs` makes throwaway TLS files.
"""
