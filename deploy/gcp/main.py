# Entry file of the Cloud Run functions source: deploy.sh copies it to the source root beside
# swarm_core/, functions/, backends/ and blueprints/. `--entry-point` picks the function.
from functions.main import execute_node, load_goal  # noqa: F401
