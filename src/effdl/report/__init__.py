"""The HTML report (plus pareto.csv) from a results dict."""
from .html import render_html, write_report

__all__ = ["render_html", "write_report"]
