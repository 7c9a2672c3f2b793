"""From cached messages to numbers: threads (``threads``, kept current by ``rethread``),
leads and first replies (``matcher``, and ``sql_leads`` for the pairing done in the
database), business time (``hours``), report tables (``metrics``), follow-on metrics
(``followon``), the weekly summary's data (``weekly``), and the ``LeadSet``/``Analysis``
objects that build them for one cache (``leadset``, ``reports``). docs/definitions.md says
what each number means; docs/architecture.md where it is computed.

May import: the core modules, ``replytime.store`` and ``replytime.sources`` (header parsing).
Never ``output``, ``api`` or ``cli`` (tests/test_layout.py checks it). Nothing here prints.
"""
