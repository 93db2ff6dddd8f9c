"""
The docs say what the code does: every example embedded in docs/guide.md is
a file in docs/examples/, verbatim, and runs successfully.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "guide.md"
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.py"))
EMBED = r"<!-- example: docs/examples/(\S+) -->\n```python\n(.*?)```"
EXPECTED_OUTPUT = {
    "backpressure.py": "server got 5000 messages; the producer was paused",
    "client_server.py": "client: got echo: hello",
    "cluster.py": "device-7 got: hello from edge-a",
    "raw_keepalive.py": "2 replies matched",
    "resume.py": "server got each message once, in order: True",
    "testing_pair.py": "dead peer detected after 3.0 s",
    "testing_client.py": "reconnection tests passed",
}


class GuideTests(SynchronousTestCase):
    def test_everyExampleIsEmbeddedVerbatim(self) -> None:
        embedded = dict(
            re.findall(
                r"<!-- example: docs/examples/(\S+) -->\n```python\n(.*?)```",
                GUIDE.read_text(),
                re.S,
            )
        )
        self.assertEqual(sorted(embedded), sorted(p.name for p in EXAMPLES))
        for path in EXAMPLES:
            self.assertEqual(embedded[path.name], path.read_text(), path.name)

    def test_examplesRun(self) -> None:
        for path in EXAMPLES:
            result = subprocess.run(
                [sys.executable, str(path)], capture_output=True, text=True, timeout=30, cwd=ROOT
            )
            self.assertEqual(result.returncode, 0, f"{path.name}: {result.stderr}")
            self.assertIn(EXPECTED_OUTPUT[path.name], result.stdout, path.name)

    def test_clientTestingExampleUnderTrialAndPytest(self) -> None:
        example = str(ROOT / "docs" / "examples" / "testing_client.py")
        for runner, passed in (
            (["-m", "twisted.trial", "--temp-directory", "/tmp/_trial_docs"], "PASSED"),
            (["-m", "pytest", "-q", "-p", "no:cacheprovider"], "2 passed"),
        ):
            result = subprocess.run(
                [sys.executable, *runner, example],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=ROOT / "docs" / "examples",
            )
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            self.assertIn(passed, result.stdout + result.stderr, runner)


class OperationsPageTests(SynchronousTestCase):
    def test_everyOptionIsDocumented(self) -> None:
        from twisted_keepalive.tap import Options

        page = (ROOT / "docs" / "operations.md").read_text()
        names = {name for name, *_ in Options.optParameters} | {"host", "connect", "stdio"}
        for name in names:
            self.assertIn(f"--{name}", page, name)
