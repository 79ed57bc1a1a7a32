"""Provisioning: fleet CA and device credentials, broker configuration, device configs."""
