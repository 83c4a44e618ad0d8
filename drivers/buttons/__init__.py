"""The staff call buttons of a counter, on GPIO (gpiozero), with debouncing."""

from drivers.buttons.panel import ButtonError, ButtonPanel, Debouncer, press

__all__ = ["ButtonError", "ButtonPanel", "Debouncer", "press"]
