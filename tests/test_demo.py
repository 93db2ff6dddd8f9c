"""
The README's first command keeps working: the demo runs two real twistd
processes, and must see the freeze detected and the recovery.
"""

from __future__ import annotations

import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase


class DemoTests(SynchronousTestCase):
    def test_demoDetectsAndRecovers(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "twisted_keepalive.demo"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("heartbeat timeouts 1", result.stdout)
        self.assertIn("detected", result.stdout)
        self.assertIn("recovered", result.stdout)
        self.assertIn("exit codes [0, 0]", result.stdout)
