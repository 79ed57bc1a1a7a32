"""Real servers for the tests: a private Mosquitto on a free loopback port, PostgreSQL by DSN.

`Mosquitto` is the product's `provisioning.localbroker.LocalBroker`: its own mosquitto.conf
in a temp dir, a free port, stop (gracefully or with SIGKILL) and restart on the same port.
Under CI=true a missing service is an error (see conftest.need).
"""

import os

from provisioning.localbroker import MOSQUITTO, free_port, wait_port  # noqa: F401
from provisioning.localbroker import LocalBroker as Mosquitto  # noqa: F401

PG_DSN = os.environ.get("CHOT_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def pg_available(dsn=PG_DSN):
    try:
        import psycopg2

        psycopg2.connect(dsn, connect_timeout=3).close()
        return True
    except Exception:
        return False
