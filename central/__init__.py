"""madoguchi's central service: queue, API and bus for one site."""
