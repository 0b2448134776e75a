"""Exit codes in one place; only entry points map failures to them."""

OK = 0  # clean stop
RUNTIME_FAILURE = 1  # something broke while running: systemd may restart us
CONFIG_ERROR = 78  # EX_CONFIG: a bad setting or a missing model; restarting will not help
