"""Device drivers for a madoguchi counter: displays, call buttons and other hardware."""
