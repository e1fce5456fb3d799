"""The LLM judge: rubrics, the answer cache, the OpenAI-compatible client, the local server, and
the choice of the multiplier the judged generations use."""
