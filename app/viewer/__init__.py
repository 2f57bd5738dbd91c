"""The OHIF viewer served under /viewer: its files, the generated configuration, the pages."""
