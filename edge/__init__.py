"""madoguchi's edge daemon: one per Raspberry Pi at a counter, kiosk or lobby."""
