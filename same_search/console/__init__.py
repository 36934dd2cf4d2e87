"""The web console on the management port: server-rendered pages, a little plain JavaScript."""
