//! The arguments of the attribute: `#[worker]` or `#[worker(crate = path)]`.

use proc_macro2::TokenStream;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, Lit, Meta, Path, Token};

use crate::ctxt::Ctxt;

/// What the attribute's arguments say.
pub struct Attr {
    /// The path every generated item uses to reach the runtime: `::forkworker` unless
    /// `crate = path` says otherwise (for a renamed dependency, or a crate re-exporting
    /// forkworker).
    pub krate: Path,
}

impl Attr {
    /// Reads the arguments, reporting every problem to `cx`.
    ///
    /// `None` when the crate path cannot be known: nothing should be generated then, since
    /// every generated path would be wrong.
    pub fn parse(args: TokenStream, cx: &Ctxt) -> Option<Attr> {
        let metas = match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args) {
            Ok(metas) => metas,
            Err(err) => {
                cx.syn_error(err);
                return None;
            }
        };
        let mut krate: Option<Path> = None;
        let mut usable = true;
        for meta in &metas {
            if !meta.path().is_ident("crate") {
                cx.error_spanned_by(
                    meta.path(),
                    format_args!(
                        "unknown argument `{}` of #[worker]; the only argument is `crate = path`, \
                         for a renamed dependency (for example `crate = ::my_forkworker`)",
                        quote::ToTokens::to_token_stream(meta.path())
                            .to_string()
                            .replace(' ', ""),
                    ),
                );
                continue;
            }
            let Meta::NameValue(name_value) = meta else {
                cx.error_spanned_by(
                    meta,
                    "expected `crate = path`, for example `crate = ::forkworker`",
                );
                usable = false;
                continue;
            };
            if krate.is_some() {
                cx.error_spanned_by(meta, "`crate` is given twice; keep one `crate = path`");
                continue;
            }
            match crate_path(&name_value.value) {
                Some(path) => krate = Some(path),
                None => {
                    cx.error_spanned_by(
                        &name_value.value,
                        "expected a path after `crate =`, for example `crate = ::forkworker`",
                    );
                    usable = false;
                }
            }
        }
        usable.then(|| Attr {
            krate: krate.unwrap_or_else(|| syn::parse_quote!(::forkworker)),
        })
    }
}

/// `crate = ::path`, or `crate = "::path"` as serde spells it.
fn crate_path(value: &Expr) -> Option<Path> {
    match value {
        Expr::Path(expr) if expr.qself.is_none() && expr.attrs.is_empty() => {
            Some(expr.path.clone())
        }
        Expr::Lit(expr) => match &expr.lit {
            Lit::Str(lit) => lit.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use quote::{ToTokens, quote};

    use super::*;

    fn parse(args: TokenStream) -> (Option<String>, Vec<String>) {
        let cx = Ctxt::new();
        let attr = Attr::parse(args, &cx);
        let errors = match cx.check() {
            Ok(()) => Vec::new(),
            Err(err) => err.into_iter().map(|e| e.to_string()).collect(),
        };
        let krate = attr.map(|a| a.krate.to_token_stream().to_string().replace(' ', ""));
        (krate, errors)
    }

    #[test]
    fn no_arguments_means_forkworker() {
        assert_eq!(parse(quote!()), (Some("::forkworker".into()), vec![]));
    }

    #[test]
    fn crate_path_as_path_or_string() {
        assert_eq!(
            parse(quote!(crate = ::renamed)).0.as_deref(),
            Some("::renamed")
        );
        assert_eq!(
            parse(quote!(crate = my::re_export,)).0.as_deref(),
            Some("my::re_export")
        );
        assert_eq!(
            parse(quote!(crate = "::renamed")).0.as_deref(),
            Some("::renamed")
        );
    }

    #[test]
    fn unknown_arguments_are_reported_but_do_not_stop_expansion() {
        let (krate, errors) = parse(quote!(workers = 4, crate = ::renamed, inline));
        assert_eq!(krate.as_deref(), Some("::renamed"));
        assert_eq!(errors.len(), 2);
        assert!(
            errors[0].starts_with("unknown argument `workers` of #[worker]"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("unknown argument `inline` of #[worker]"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_bad_crate_path_stops_expansion() {
        let (krate, errors) = parse(quote!(crate = 3));
        assert_eq!(krate, None);
        assert_eq!(
            errors,
            ["expected a path after `crate =`, for example `crate = ::forkworker`"]
        );
        let (krate, errors) = parse(quote!(crate));
        assert_eq!(krate, None);
        assert_eq!(errors.len(), 1);
        let (krate, errors) = parse(quote!(crate = ::a, crate = ::b));
        assert_eq!(krate.as_deref(), Some("::a"));
        assert_eq!(errors, ["`crate` is given twice; keep one `crate = path`"]);
    }
}
