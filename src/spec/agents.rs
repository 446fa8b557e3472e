//! The built-in agents and the actions each offers: the catalog validation checks the
//! steps of a workflow against, and the local executor runs.

/// A built-in agent type and its actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltinAgent {
    /// The agent's name, as steps refer to it (also its `type` in Agent manifests).
    pub name: &'static str,
    /// The actions it offers; the first is the default.
    pub actions: &'static [&'static str],
    /// One line on what it does.
    pub summary: &'static str,
}

/// The agents every project has, whether or not an Agent manifest configures them.
pub const BUILTIN_AGENTS: &[BuiltinAgent] = &[
    BuiltinAgent {
        name: "shell",
        actions: &["run"],
        summary: "runs a command (argv array, or a string given to sh -c)",
    },
    BuiltinAgent {
        name: "test_runner",
        actions: &["setup_environment", "run_tests"],
        summary: "sets up an environment and runs a configured test suite, collecting JUnit XML",
    },
    BuiltinAgent {
        name: "report_generator",
        actions: &[
            "generate_html_report",
            "generate_junit_report",
            "generate_json_report",
        ],
        summary: "writes HTML, JUnit and JSON reports of a run",
    },
    BuiltinAgent {
        name: "http",
        actions: &["request"],
        summary: "sends an HTTP request and checks the response",
    },
];

/// The built-in agent of that name or type.
pub fn builtin(name: &str) -> Option<&'static BuiltinAgent> {
    BUILTIN_AGENTS.iter().find(|agent| agent.name == name)
}
