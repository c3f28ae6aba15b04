"""The fast default encoding, how the panel names it, and the app processes' start-up import trim."""

from __future__ import annotations

import subprocess
import sys

import pytest

from workbench import defaults
from workbench.data import codec
from workbench.replay import ReplayStatus, replay_format
from workbench.ui._panel import encoding_text


def test_the_default_encoding_is_packed_arrow_and_json_stays_one_per_message() -> None:
    assert defaults.REPLAY_ENCODING in codec.ENCODINGS
    assert replay_format(None, None) == (defaults.REPLAY_PACK, defaults.REPLAY_ENCODING)
    assert replay_format(None, "json") == (1, "json")  # interoperability: one query per message
    assert replay_format(None, "arrow-zstd") == (defaults.REPLAY_PACK, "arrow-zstd")
    assert replay_format(1, None) == (1, "json")
    assert replay_format(20, None) == (20, "arrow")
    assert replay_format(7, "arrow") == (7, "arrow")


def test_the_replay_status_carries_the_encoding_and_the_panel_names_it() -> None:
    status = ReplayStatus(replay_id="r", file="f", state="running", speedup=600.0, rows_sent=1, rows_total=2,
                          next_row=1, event_time=None, first_event_time=None, last_event_time=None, rate_now=0.0,
                          rate_avg=0.0, eta_seconds=None, pack=100, encoding="arrow")
    again = ReplayStatus.from_json(status.to_json())
    assert (again.encoding, again.pack) == ("arrow", 100)
    assert encoding_text(again.encoding, again.pack) == "arrow, up to 100 queries per message"
    assert encoding_text("json", 1) == "json, one query per message"
    assert encoding_text(None, 1) == "-"  # a status from an older replay


@pytest.mark.parametrize("skip", [True, False])
def test_an_app_process_skips_the_iri_grammar_and_jsonschema_still_imports(skip: bool) -> None:
    code = ("import sys\n"
            "from workbench.pipeline._imports import skip_unused_imports\n"
            f"marked = skip_unused_imports() if {skip} else []\n"
            "import jsonschema, quixstreams\n"
            "jsonschema.Draft202012Validator({'type': 'string', 'format': 'iri'}).validate('x')\n"
            "print(marked[:1], sys.modules.get('rfc3987_syntax') is not None)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    if skip:
        assert out == "['rfc3987_syntax'] False"
    else:
        assert out.startswith("[] ")  # a library import changes nothing (True where the package is installed)
