"""Tool-call parsers: how a model family writes tool calls in its text, read back as
OpenAI ``tool_calls`` (``--tool-call-parser NAME``)."""

from corral.entrypoints.tool_parsers.base import CallDelta as CallDelta
from corral.entrypoints.tool_parsers.base import Delta as Delta
from corral.entrypoints.tool_parsers.base import ExtractedToolCalls as ExtractedToolCalls
from corral.entrypoints.tool_parsers.base import ToolCall as ToolCall
from corral.entrypoints.tool_parsers.base import ToolCallStream as ToolCallStream
from corral.entrypoints.tool_parsers.base import ToolParser as ToolParser
from corral.entrypoints.tool_parsers.base import collect as collect
from corral.entrypoints.tool_parsers.base import get_tool_parser as get_tool_parser
from corral.entrypoints.tool_parsers.base import register_tool_parser as register_tool_parser
from corral.entrypoints.tool_parsers.base import tool_parser_names as tool_parser_names
from corral.entrypoints.tool_parsers.hermes import HermesToolParser as HermesToolParser
