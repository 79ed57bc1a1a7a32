"""GPIO feedback through gpiozero: pass/fail LEDs, buzzer, relay, button, status LED."""
