"""Everything users see: the terminal tables and machine formats (``render``), format
dispatch (``emit``), the HTML pages with charts (``html``), the weekly summary's terminal
rendering (``weekly``) and the Parquet export (``export``). Nothing here fetches mail.

May import: the core modules, ``replytime.store`` and ``replytime.analysis``. Never
``sources``, ``api`` or ``cli`` (tests/test_layout.py checks it).
"""
