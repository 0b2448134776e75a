"""Check a vLLM server command line with vLLM's own parser; run with a Python that has vLLM.

    VLLM_TARGET_DEVICE=cpu python tests/helpers/vllm_parse.py --model M --served-model-name N ...
Exit status 0 and "accepted" when vLLM would start with these arguments, 2 when it rejects them.
"""

import os
import sys

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
from vllm.entrypoints.common.cli_args import make_arg_parser, validate_parsed_serve_args  # noqa: E402
from vllm.utils.argparse_utils import FlexibleArgumentParser  # noqa: E402

args = make_arg_parser(FlexibleArgumentParser()).parse_args(sys.argv[1:])
validate_parsed_serve_args(args)
print("accepted", args.model, args.served_model_name, args.kv_cache_dtype, args.reasoning_parser,
      args.tool_call_parser)
