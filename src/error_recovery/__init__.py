"""Error recovery for a voice agent: circuit breaker, retries with backoff, spoken fallbacks.

Three parts, each usable alone and testable without sleeping:

* :class:`CircuitBreaker` (:mod:`.breaker`) stops calling a service that keeps failing.
  CLOSED -> OPEN after ``failure_threshold`` consecutive counted failures; OPEN fails fast
  with :class:`~src.errors.CircuitOpenError`; after ``recovery_timeout`` seconds exactly
  one caller goes through as the HALF_OPEN probe while everyone else still fails fast; the
  probe's success closes the circuit, its failure re-opens it with a fresh timeout.
* :func:`retry_with_exponential_backoff` (:mod:`.retry`) repeats retryable failures with
  capped exponential backoff (full jitter), honours ``Retry-After`` and an overall deadline.
* :class:`ErrorRecoveryMixin` (:mod:`.mixin`) gives an agent the spoken side: natural
  phrases per error type (:data:`ERROR_RESPONSES`, kept with every other spoken sentence
  in :mod:`src.phrases`), a tool wrapper that keeps session state intact, and the combined
  retry + breaker + fallback call.

Policies are plain functions (:mod:`.policies`: :func:`counts_as_failure`,
:func:`is_retryable`, :func:`backoff_delay`, :func:`error_type_for`) so tests and callers
can use them directly. Clocks, sleeps and random sources are parameters.
"""

from ..phrases import ERROR_RESPONSES
from .breaker import CircuitBreaker, CircuitState
from .mixin import ErrorRecoveryMixin
from .policies import backoff_delay, counts_as_failure, error_type_for, is_retryable
from .retry import DEFAULT_VOICE_RETRY, VoiceRetryPolicy, retry_with_exponential_backoff
from .window import RateRule, SlidingWindow, process_window

__all__ = [
    "DEFAULT_VOICE_RETRY",
    "ERROR_RESPONSES",
    "CircuitBreaker",
    "CircuitState",
    "ErrorRecoveryMixin",
    "RateRule",
    "SlidingWindow",
    "VoiceRetryPolicy",
    "backoff_delay",
    "counts_as_failure",
    "error_type_for",
    "is_retryable",
    "process_window",
    "retry_with_exponential_backoff",
]
