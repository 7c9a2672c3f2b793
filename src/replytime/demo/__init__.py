"""The example that `replytime demo` imports: a made-up sales team's mailbox and its config.

Package data, so the demo works from an installed wheel. The repository's examples/ links
here (examples/mailbox.mbox, examples/replytime.toml); examples/generate.py rewrites the
mailbox through that link and examples/README.md describes what is in it.
"""
