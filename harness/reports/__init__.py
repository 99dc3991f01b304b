"""Reports made from results.json: HTML report, terminal summary, release comparison, conformance matrix.

Every writer takes the results dict (format 1, see ``results.py``) and renders only what it holds:
no writer reads a target file, the environment or the server.
"""
