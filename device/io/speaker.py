"""The optional speaker: a short Vietnamese prompt for each answer, for people who cannot see the LEDs.

Off by default (`feedback.speaker = false`). Three prompts, WAV files in `feedback.voice_dir`:
pass.wav ("Mời qua"), fail.wav ("Không hợp lệ") and guard.wav ("Xin gặp bảo vệ"), made at
provisioning by `chot terminal voice` with espeak-ng's Vietnamese voice (`generate`), or recorded
by a person and copied there under the same names (any WAV that `aplay` plays).

Which prompt a signal gets (`prompt_for`): pass -> pass; fail, unreadable, unsigned -> fail; every
other signal (fault, "see the guard", and kinds added later) -> guard.

`Speaker.say(kind)` never waits: it leaves the prompt in a one-slot queue and one worker thread
plays it with `aplay -D feedback.speaker_device`. The newest prompt wins: a prompt still waiting
is replaced and one playing is cut short, so the voice always speaks of the last person. Feedback
calls it after the LEDs, buzzer and relay are switched, so the speaker cannot delay them. With no
sound device, no `aplay` or a missing file the terminal goes on silently: one log line says why
(again only after it worked in between), nothing is raised.
"""

import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from chot.errors import HardwareError

log = logging.getLogger(__name__)

PROMPTS = {"pass": "Mời qua.", "fail": "Không hợp lệ.", "guard": "Xin gặp bảo vệ."}
PROMPT_FILES = tuple(f"{name}.wav" for name in PROMPTS)
KIND_PROMPT = {"pass": "pass", "paper": "pass", "staff": "pass",
               "fail": "fail", "unreadable": "fail", "unsigned": "fail"}
PLAY_TIMEOUT_S = 10.0  # a prompt that plays longer than this is cut (a hung sound device)


def prompt_for(kind):
    """The prompt ("pass", "fail" or "guard") of feedback signal `kind`."""
    return KIND_PROMPT.get(kind, "guard")


def generate(voice_dir, espeak="espeak-ng", voice="vi", speed=140):
    """Make pass.wav, fail.wav and guard.wav in `voice_dir` with espeak-ng; return their paths.

    Raises HardwareError when espeak-ng is missing or fails.
    """
    exe = shutil.which(espeak)
    if exe is None:
        raise HardwareError(f"{espeak} is not installed: run `apt install espeak-ng` (or copy recorded "
                            f"{', '.join(PROMPT_FILES)} into {voice_dir})")
    folder = Path(voice_dir)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, text in PROMPTS.items():
        target = folder / f"{name}.wav"
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".wav.tmp")
        os.close(fd)
        try:
            done = subprocess.run([exe, "-v", voice, "-s", str(int(speed)), "-w", tmp, text],
                                  capture_output=True, text=True, timeout=60)
            if done.returncode != 0 or os.path.getsize(tmp) == 0:
                raise HardwareError(f"{espeak} -v {voice} failed ({done.stderr.strip() or done.returncode}): "
                                    "check that espeak-ng-data has the Vietnamese voice")
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        out.append(target)
    return out


class Speaker:
    """Plays the prompts through ALSA from one worker thread; see the module doc."""

    def __init__(self, device="default", voice_dir="/var/lib/chot/voice", player="aplay"):
        self.device = device
        self.voice_dir = Path(voice_dir)
        self.files = {}
        for name in PROMPTS:
            path = self.voice_dir / f"{name}.wav"
            if path.is_file():
                self.files[name] = path
            else:
                log.error("speaker: %s is missing, that prompt stays silent: run `chot terminal voice`", path)
        self.player = shutil.which(player)
        if self.player is None:
            log.error("speaker: %s is not installed (apt install alsa-utils): the terminal stays silent", player)
        self.played = {name: 0 for name in PROMPTS}  # prompts played to their end
        self.cut = 0  # prompts cut short or dropped for a newer one
        self.failed = 0  # prompts the sound device did not play
        self.last = None  # the prompt last started
        self._failing = False
        self._pending = None
        self._busy = False
        self._closed = False
        self._cond = threading.Condition()
        self._worker = threading.Thread(target=self._work, name="chot-speaker", daemon=True)
        self._worker.start()

    @classmethod
    def from_config(cls, feedback_cfg):
        """The speaker of the `[feedback]` section, or None when `speaker` is off."""
        if not getattr(feedback_cfg, "speaker", False):
            return None
        return cls(feedback_cfg.speaker_device, feedback_cfg.voice_dir)

    def say(self, kind):
        """Queue the prompt of signal `kind` (the newest wins) and return at once."""
        name = prompt_for(kind)
        with self._cond:
            if self._closed:
                return
            if self._pending is not None:
                self.cut += 1
            self._pending = name
            self._cond.notify_all()

    def _work(self):
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                name, self._pending = self._pending, None
                self._busy = True
            try:
                self._play(name)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _play(self, name):
        path = self.files.get(name)
        if path is None or self.player is None:
            return
        self.last = name
        try:
            proc = subprocess.Popen([self.player, "-q", "-D", self.device, str(path)], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as exc:
            self._fail(f"{self.player} could not start: {exc}")
            return
        waited = 0.0
        with self._cond:
            while proc.poll() is None:
                if self._pending is not None or self._closed or waited >= PLAY_TIMEOUT_S:
                    proc.terminate()  # a newer prompt (or the end): this one is cut short
                    self.cut += 1
                    break
                self._cond.wait(0.02)
                waited += 0.02
        try:
            _, err = proc.communicate(timeout=5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if proc.returncode == 0:
            self.played[name] += 1
            if self._failing:
                self._failing = False
                log.warning("speaker: the sound device %r plays again", self.device)
        elif proc.returncode > 0:
            self._fail(f"aplay -D {self.device} exited {proc.returncode}: "
                       f"{err.decode(errors='replace').strip()[-300:]}")

    def _fail(self, why):
        self.failed += 1
        if not self._failing:
            self._failing = True
            log.error("speaker: no sound (%s); the LEDs and buzzer still answer: check feedback.speaker_device "
                      "(`aplay -L`) and the speaker's cable", why)

    def wait_idle(self, timeout=None):
        """Wait until no prompt is waiting or playing; True when so (tests, the demo)."""
        with self._cond:
            return self._cond.wait_for(lambda: (self._pending is None and not self._busy) or self._closed, timeout)

    def close(self):
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._worker is not threading.current_thread():
            self._worker.join(PLAY_TIMEOUT_S)
