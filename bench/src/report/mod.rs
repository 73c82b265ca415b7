//! The comparison report: Markdown, a self-contained HTML page with inline SVG charts, and the
//! "which broker for which need" lines, each computed from what was measured or declared, with
//! its evidence beside it.
//!
//! One file per job: `select` (which of a comparison's results each part reads), `needs` (the
//! "which broker for which need" lines), `verdicts` (one per shape of work), `charts` (the SVG
//! charts), `tables` (the cells both pages show), `markdown` and `html` (the two pages),
//! `scaling` (the scaling curves and tables), `peers` (a peer library beside mailroom) and
//! `routing` (native vs client-side routing, measured).

mod charts;
mod html;
mod markdown;
mod needs;
mod peers;
mod routing;
mod scaling;
mod select;
mod tables;
mod verdicts;

pub use charts::charts;
pub use html::html;
pub use markdown::markdown;
pub use needs::{needs, NeedLine};
pub use scaling::CHART_CLASS as SCALING_CHART_CLASS;
pub use select::baseline_ratios;
