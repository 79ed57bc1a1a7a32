"""Chot's own fault-injection suite (`make faults`, `python -m faults.run`); not part of the product.

faults/run.py        the command line, the scenario loop and the table
faults/cluster.py    the real processes: Mosquitto, a private PostgreSQL, collectors, terminals
faults/proxy.py      a TCP proxy between terminals and broker that can blackhole or refuse
faults/ledger.py     reconciles what terminals committed with what the collector stored
faults/injectors.py  the faults
faults/terminal_shim.py  runs `chot terminal run` and records every PASS LED pulse (the witness)
See docs/reliability.md.
"""
