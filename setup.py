"""Chot: QR checkpoint terminals on Raspberry Pi and their central collector."""

from setuptools import find_packages, setup

setup(
    name="chot",
    version="0.1.0",
    description="Firmware for wall-mounted QR checkpoint terminals and their central collector",
    python_requires=">=3.11",
    packages=find_packages(include=["chot*", "device*", "collector*", "provisioning*", "chotdemo*"]),
    include_package_data=True,
    package_data={
        "collector": ["web/templates/*.html", "web/templates/**/*.html", "web/static/*",
                      "web/locale/*.pot", "web/locale/*/LC_MESSAGES/*.po", "web/README.md", "web/babel.cfg"],
        "provisioning": ["*.sh", "requirements-terminal.txt"],
    },
    install_requires=[
        "zxing-cpp==3.1.1",
        "pyzbar==0.1.9",
        "gpiozero==2.0.1.post3",
        "paho-mqtt==2.2.0",
        "peewee==4.5.3",
        "cbor2==6.3.0",
        "cryptography==50.0.2",
        "segno==1.6.6",
        # Ranges, not pins: on a Pi the venv is made with --system-site-packages and must keep
        # Raspberry Pi OS's numpy and pillow, against which python3-picamera2 is built.
        "pillow>=9.4",
        "numpy>=1.24,<3",
        "jsonschema==4.26.0",
        "pynacl==1.6.2",
        "argon2-cffi==25.1.0",
        "msgspec==0.23.0",
    ],
    extras_require={
        # Only a Pi has these; picamera2 comes from Raspberry Pi OS (python3-picamera2).
        "pi": ["RPi.GPIO>=0.7.1", "lgpio==0.2.2.0"],
        "usb": ["opencv-python-headless==5.0.0.93"],
        "postgres": ["psycopg2-binary==2.9.13"],
        # Handheld scanners (scanner.source = "hid" / "serial"). evdev builds from source against the
        # kernel's headers (linux-libc-dev); on a Pi `apt install python3-evdev` is the other way.
        "hid": ["evdev==2.0.0"],
        "serial": ["pyserial==3.5"],
        # The collector's console (collector/web); a terminal never installs it (its hashed
        # requirements cover install_requires only): pip install 'chot[console]' on the collector.
        # (Written out, not a variable: provisioning/requirements.py reads this dict as a literal.)
        # httpx: the national system's forwarder (collector/forward.py), a collector-only client too
        "console": [
            "fastapi==0.165.0", "starlette==1.10.0", "uvicorn==0.55.0", "jinja2==3.1.6", "babel==2.19.0",
            "python-multipart==0.0.34", "openpyxl==3.1.5", "httpx==0.29.0",
        ],
        "test": [
            "pytest==9.2.0",
            "pytest-timeout==2.4.0",
            "hypothesis==6.170.17",
            "ruff==0.17.6",
            "opencv-python-headless==5.0.0.93",
            "psycopg2-binary==2.9.13",
            # the console's, as in "console" above
            "fastapi==0.165.0", "starlette==1.10.0", "uvicorn==0.55.0", "jinja2==3.1.6", "babel==2.19.0",
            "python-multipart==0.0.34", "openpyxl==3.1.5",
            "httpx==0.29.0",
            "evdev==2.0.0", "pyserial==3.5",  # the handheld scanners' (hid, serial above)
            "playwright==1.65.3",  # drives Debian's chromium (/usr/bin/chromium); no browser download
        ],
    },
    entry_points={"console_scripts": ["chot=chot.cli:main"]},
)
