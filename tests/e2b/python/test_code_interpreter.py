"""e2b-code-interpreter's run_code and contexts, mapped onto Prism code contexts."""

import pytest
from e2b_code_interpreter import Sandbox


@pytest.fixture(scope="module")
def ci():
    sb = Sandbox.create(timeout=300, envs={"CI_VAR": "seen-by-code"})
    yield sb
    sb.kill()


def test_state_persists_across_calls(ci):
    assert ci.run_code("x = 20").error is None
    ex = ci.run_code("x * 2 + 2")
    assert ex.error is None
    assert ex.text == "42"
    assert ex.results[0].is_main_result


def test_stdout_stderr_and_callbacks(ci):
    seen = []
    ex = ci.run_code("import sys\nprint('hi')\nprint('oops', file=sys.stderr)", on_stdout=lambda m: seen.append(m.line))
    assert "".join(ex.logs.stdout) == "hi\n"
    assert "".join(ex.logs.stderr) == "oops\n"
    assert "".join(seen) == "hi\n"


def test_errors_are_reported_not_raised(ci):
    ex = ci.run_code("1 / 0")
    assert ex.error is not None
    assert ex.error.name == "ZeroDivisionError"
    assert "division by zero" in ex.error.value
    assert "ZeroDivisionError" in ex.error.traceback
    # The context survives its error.
    assert ci.run_code("x").text == "20"


def test_rich_results(ci):
    ex = ci.run_code("class H:\n    def _repr_html_(self): return '<b>hi</b>'\nH()")
    assert ex.results[0].html == "<b>hi</b>"


def test_contexts_are_isolated_and_managed(ci):
    ctx = ci.create_code_context(cwd="/tmp")
    assert ctx.cwd == "/tmp"
    assert ci.run_code("y = 5", context=ctx).error is None
    assert ci.run_code("import os; os.getcwd()", context=ctx).text == "'/tmp'"
    other = ci.run_code("y")
    assert other.error is not None and other.error.name == "NameError"
    assert ctx.id in [c.id for c in ci.list_code_contexts()]
    ci.restart_code_context(ctx)
    assert ci.run_code("y", context=ctx).error.name == "NameError"
    ci.remove_code_context(ctx)
    assert ctx.id not in [c.id for c in ci.list_code_contexts()]


def test_javascript_and_bash(ci):
    assert ci.run_code("const a = 40; a + 2", language="js").text == "42"
    ex = ci.run_code("echo from-bash", language="bash")
    assert "".join(ex.logs.stdout) == "from-bash\n"


def test_per_run_envs_hold_for_that_run_only(ci):
    code = "import os, subprocess\n(os.environ['RUN_VAR'], os.environ['CI_VAR'], " \
        "subprocess.run(['sh', '-c', 'echo $RUN_VAR'], capture_output=True, text=True).stdout)"
    ex = ci.run_code(code, envs={"RUN_VAR": "per-run", "CI_VAR": "shadowed"})
    assert ex.error is None, ex.error
    assert ex.text == "('per-run', 'shadowed', 'per-run\\n')"
    after = ci.run_code("import os; (os.environ.get('RUN_VAR'), os.environ['CI_VAR'])")
    assert after.text == "(None, 'seen-by-code')"
    js = ci.run_code("process.env.JS_VAR", language="js", envs={"JS_VAR": "in-js"})
    assert js.text == "'in-js'"
    sh = ci.run_code('echo "$SH_VAR"', language="bash", envs={"SH_VAR": "a b'c"})
    assert "".join(sh.logs.stdout) == "a b'c\n"
    sh = ci.run_code('echo "${SH_VAR-unset}"', language="bash")
    assert "".join(sh.logs.stdout) == "unset\n"


def test_sandbox_envs_reach_code_contexts(ci):
    assert ci.run_code("import os; os.environ['CI_VAR']").text == "'seen-by-code'"


def test_client_timeout_interrupts_the_run(ci):
    from e2b import TimeoutException

    slow = "import time\nfor _ in range(300):\n    time.sleep(0.1)\nfinished = True"
    with pytest.raises(TimeoutException):
        ci.run_code(slow, timeout=1)
    # Closing the stream interrupted the run: the loop never got to set `finished`, and the
    # context takes new code (it would otherwise be busy for 30 s and then set it).
    ex = ci.run_code("'finished' in globals()")
    assert ex.error is None, ex.error
    assert ex.text == "False"
