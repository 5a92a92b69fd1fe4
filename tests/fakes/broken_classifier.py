"""The sidecar with a bug injected into its classifier, run as its own process:

    python -m tests.fakes.broken_classifier run --config FILE

Classifying an error span whose status message, or an error log record whose body, contains
POISON raises, as a classifier bug meeting an input nobody anticipated would. Everything else
runs the real code, so an end-to-end test can check that the sidecar fails open on it.
"""

from __future__ import annotations

import os
import sys

from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from sidecar import runtime
from sidecar.__main__ import main
from sidecar.core.taxonomy import Classification
from sidecar.pipeline.classify import Classifier
from sidecar.pipeline.evidence import LogFacts, SpanFacts

POISON = "poison-pill"

_classify_span_facts = Classifier.classify_span_facts
_classify_log_facts = Classifier.classify_log_facts


def _span(self: Classifier, facts: SpanFacts) -> Classification:
    if POISON in facts.status_message:
        raise RuntimeError("injected classifier bug (span)")
    return _classify_span_facts(self, facts)


def _log(self: Classifier, facts: LogFacts, record: LogRecord) -> Classification:
    if POISON in record.body.string_value:
        raise RuntimeError("injected classifier bug (log record)")
    return _classify_log_facts(self, facts, record)


if __name__ == "__main__":
    Classifier.classify_span_facts = _span  # type: ignore[method-assign]
    Classifier.classify_log_facts = _log  # type: ignore[method-assign]
    # glibc's malloc variables as a deployment may set them (the launcher keeps them and sets the rest).
    for name, value in runtime.MALLOC_ENV.items():
        os.environ.setdefault(name, value)
    sys.exit(main())
