"""The suite engine: YAML suites -> validated test specs -> pytest items -> steps run over protocol sessions."""
