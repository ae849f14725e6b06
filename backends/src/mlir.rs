//! One MLIR context per compilation: every dialect, pass and LLVM translation
//! registered, and a diagnostic handler that collects messages (instead of printing
//! them to stderr) so a failure becomes a [`BackendError::Mlir`] with the text.

use crate::{BackendError, Result};
use melior::diagnostic::{Diagnostic, DiagnosticSeverity};
use melior::dialect::DialectRegistry;
use melior::ir::operation::OperationLike;
use melior::ir::Module;
use melior::pass::PassManager;
use melior::utility::{
    parse_pass_pipeline, register_all_dialects, register_all_llvm_translations, register_all_passes,
};
use melior::Context;
use std::sync::{Arc, Mutex};

pub(crate) struct Session {
    context: Context,
    diagnostics: Arc<Mutex<Vec<String>>>,
}

impl Session {
    pub fn new() -> Session {
        let registry = DialectRegistry::new();
        register_all_dialects(&registry);
        // Single-threaded: compile times here are small, and diagnostics come in order.
        let context = Context::new_with_registry(&registry, false);
        context.load_all_available_dialects();
        register_all_llvm_translations(&context);
        register_all_passes();
        let diagnostics = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&diagnostics);
        context.attach_diagnostic_handler(move |d| {
            if let Ok(mut all) = sink.lock() {
                all.push(format_diagnostic(&d));
            }
            // Handled: MLIR prints nothing itself.
            true
        });
        Session {
            context,
            diagnostics,
        }
    }

    /// Everything MLIR reported since the last call, one diagnostic per line.
    fn take_diagnostics(&self) -> String {
        match self.diagnostics.lock() {
            Ok(mut all) => std::mem::take(&mut *all).join("\n"),
            Err(_) => String::new(),
        }
    }

    fn failure(&self, stage: &'static str, fallback: &str) -> BackendError {
        let mut message = self.take_diagnostics();
        if message.is_empty() {
            message = fallback.to_string();
        }
        BackendError::Mlir { stage, message }
    }

    /// Parse and verify MLIR source text.
    pub fn parse(&self, source: &str) -> Result<Module<'_>> {
        let Some(module) = Module::parse(&self.context, source) else {
            let mut err = self.failure("parse", "the module does not parse");
            if let BackendError::Mlir { message, .. } = &mut err {
                append_source_lines(message, source);
            }
            return Err(err);
        };
        if !module.as_operation().verify() {
            return Err(self.failure("verify", "the module does not verify"));
        }
        self.take_diagnostics();
        Ok(module)
    }

    /// Run a textual pass pipeline (`builtin.module(...)`) on `module`.
    pub fn run_pipeline(
        &self,
        module: &mut Module,
        pipeline: &str,
        stage: &'static str,
    ) -> Result<()> {
        let pm = PassManager::new(&self.context);
        parse_pass_pipeline(pm.as_operation_pass_manager(), pipeline).map_err(|e| {
            BackendError::Mlir {
                stage,
                message: format!("bad pass pipeline: {e}"),
            }
        })?;
        pm.run(module)
            .map_err(|_| self.failure(stage, "a pass failed without a diagnostic"))?;
        self.take_diagnostics();
        Ok(())
    }
}

/// `layers.0.attn:%12 matmul: error: <message>`, then its notes.
fn format_diagnostic(d: &Diagnostic) -> String {
    let severity = match d.severity() {
        DiagnosticSeverity::Error => "error",
        DiagnosticSeverity::Warning => "warning",
        DiagnosticSeverity::Note => "note",
        DiagnosticSeverity::Remark => "remark",
    };
    let mut s = format!(
        "{}: {severity}: {d}",
        location_text(&d.location().to_string())
    );
    for i in 0..d.note_count() {
        if let Ok(note) = d.note(i) {
            s.push_str(&format!(
                "\n  {}: note: {note}",
                location_text(&note.location().to_string())
            ));
        }
    }
    s
}

/// `loc("layers.0:%3 add")` → `layers.0:%3 add`; other locations stay as printed.
fn location_text(printed: &str) -> String {
    printed
        .strip_prefix("loc(\"")
        .and_then(|s| s.strip_suffix("\")"))
        .filter(|s| !s.contains('"'))
        .map(str::to_string)
        .unwrap_or_else(|| printed.to_string())
}

/// A parse error is a bug of the emitter, not of the model: show the offending lines
/// of the generated source (`loc("-":LINE:COL)` in the diagnostic).
fn append_source_lines(message: &mut String, source: &str) {
    let mut lines: Vec<usize> = message
        .match_indices("\":")
        .filter_map(|(at, _)| {
            let rest = &message[at + 2..];
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            digits.parse().ok()
        })
        .collect();
    lines.sort_unstable();
    lines.dedup();
    for line in lines {
        if let Some(text) = source.lines().nth(line.saturating_sub(1)) {
            message.push_str(&format!("\n  line {line}: {}", text.trim()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_diagnostics_name_the_ir_node() {
        let source = r#"
module {
  func.func @f(%a: f32, %b: i32) {
    %0 = arith.addf %a, %a : f32 loc("layers.0.attn:%12 add")
    %1 = "arith.addi"(%0, %b) : (f32, i32) -> i32 loc("layers.0.attn:%13 add")
    return
  }
}"#;
        let session = Session::new();
        let Err(err) = session.parse(source) else {
            panic!("the module is invalid")
        };
        let text = err.to_string();
        assert!(text.starts_with("MLIR "), "{text}");
        assert!(text.contains("layers.0.attn:%13 add: error:"), "{text}");
    }

    #[test]
    fn parse_errors_show_the_generated_line() {
        let session = Session::new();
        let source = "module {\n  %0 = nonsense.op\n}";
        let Err(err) = session.parse(source) else {
            panic!("the module is invalid")
        };
        let text = err.to_string();
        assert!(text.contains("MLIR parse failed"), "{text}");
        assert!(text.contains("line 2: %0 = nonsense.op"), "{text}");
    }

    #[test]
    fn bad_pipelines_are_errors() {
        let session = Session::new();
        let mut module = session.parse("module {}").unwrap();
        let err = session
            .run_pipeline(&mut module, "builtin.module(no-such-pass)", "test")
            .unwrap_err();
        assert!(err.to_string().contains("no-such-pass"), "{err}");
    }
}
