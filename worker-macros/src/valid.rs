//! Every check, in one place. Each problem is reported to the [`Ctxt`] (so the user sees all of
//! them in one compile), spanned on the offending token, and saying what to write instead.
//!
//! A method or hook that fails a check is dropped from the model, so the expansion that goes out
//! with the errors covers only what is sound and adds no errors of its own.

use std::collections::HashMap;

use syn::ext::IdentExt;
use syn::visit::{self, Visit};
use syn::{
    GenericParam, Lifetime, ReceiverKind, ReturnType, Safety, Type, TypeImplTrait, TypeReference,
};

use crate::ast::{Hook, HookKind, Input, Method, ungroup};
use crate::ctxt::Ctxt;
use crate::reserved::RESERVED;

/// Checks the whole impl block, dropping the methods and hooks that cannot be generated.
///
/// Returns `false` when the impl block itself cannot be worked (a trait impl, a generic impl,
/// a self type without a name): then nothing beyond the user's code should be generated.
pub fn check(input: &mut Input, cx: &Ctxt) -> bool {
    let workable = check_impl(input, cx);
    let mediator = match input.ident {
        Some(ident) => format!("{}Mediator", ident.unraw()),
        None => "mediator".to_owned(),
    };
    input
        .methods
        .retain(|method| check_method(method, &mediator, cx));
    check_variants(input, cx);
    input.hooks.retain(|hook| check_hook(hook, cx));
    workable
}

fn check_impl(input: &Input, cx: &Ctxt) -> bool {
    let item = input.original;
    let mut ok = true;
    if let Some((path, _)) = &item.trait_ {
        cx.error_spanned_by(
            path,
            "#[worker] goes on an inherent impl block, like `impl Primes { ... }`, not on a \
             trait impl; move the methods to run in workers into an inherent impl",
        );
        ok = false;
    }
    if !item.generics.params.is_empty() {
        cx.error_spanned_by(
            &item.generics,
            "#[worker] cannot go on a generic impl block: a pool forks one concrete type; \
             write the impl for a concrete type (like `impl Sieve<u64>`)",
        );
        ok = false;
    }
    match (input.ident, ungroup(&item.self_ty)) {
        (Some(_), self_ty) => {
            if let Some(lifetime) = find(self_ty).lifetime {
                cx.error_spanned_by(
                    lifetime,
                    "the type of a worker must be `'static`: it lives on in forked processes; \
                     use owned fields instead of borrowed ones",
                );
                ok = false;
            }
        }
        (None, self_ty) => {
            cx.error_spanned_by(
                self_ty,
                "#[worker] needs a named type, like `impl Primes { ... }`: the generated \
                 `PrimesMediator`, `PrimesArgs` and `PrimesReturn` take their names from it",
            );
            ok = false;
        }
    }
    ok
}

fn check_method(method: &Method, mediator: &str, cx: &Ctxt) -> bool {
    let mut ok = true;
    let mut error = |tokens: &dyn quote::ToTokens, message: String| {
        cx.error_spanned_by(tokens, message);
        ok = false;
    };
    let name = &method.name;
    let sig = &method.original.sig;

    if RESERVED.contains(&name.as_str()) {
        let clash = match name.as_str() {
            "new" => format!("`{mediator}::new`, the constructor of the generated `{mediator}`"),
            "deref" => format!("`Deref::deref`, which the generated `{mediator}` implements"),
            "deref_mut" => {
                format!("`DerefMut::deref_mut`, which the generated `{mediator}` implements")
            }
            // The shared face's own (see reserved.rs); `mediator` ends with "Mediator".
            "builder" | "clone" | "close" | "is_open" | "remote" | "caller_id" => {
                let pool = format!("{}Pool", mediator.trim_end_matches("Mediator"));
                match name.as_str() {
                    "builder" => {
                        format!("`{pool}::builder`, the constructor of the generated `{pool}`")
                    }
                    "remote" => format!(
                        "`{pool}::remote`, the constructor of the generated `{pool}`'s connected face"
                    ),
                    "caller_id" => format!(
                        "`RemotePool::caller_id`, a method of the generated `{pool}` when connected"
                    ),
                    "clone" => format!("`Clone::clone`, which the generated `{pool}` implements"),
                    _ => format!("`SharedPool::{name}`, a method of the generated `{pool}`"),
                }
            }
            _ => format!("`Mediator::{name}`, a method of the generated `{mediator}`"),
        };
        error(
            method.ident,
            format!("`{name}` clashes with {clash}; rename the method (for example `{name}_`)"),
        );
    }
    if let Some(attr) = method
        .original
        .attrs
        .iter()
        .find(|a| a.path().is_ident("cfg"))
    {
        error(
            attr,
            format!(
                "#[cfg] on a proxied method is not supported: `{name}` would vanish while its \
                 proxy and its method index stay; move the method to an impl block without \
                 #[worker], or the #[cfg] into its body"
            ),
        );
    }
    if let Some(asyncness) = &sig.asyncness {
        error(
            asyncness,
            format!(
                "`{name}` is `async`; a worker method runs to completion in the worker \
                 process, so it must be a plain `fn` (block on the future inside it)"
            ),
        );
    }
    if let Safety::Unsafe(unsafety) = &sig.safety {
        error(
            unsafety,
            format!(
                "`{name}` is an `unsafe fn`; a proxy could not uphold its safety contract in \
                 another process; make it safe, or keep it private and call it from a safe method"
            ),
        );
    }
    if !sig.generics.params.is_empty() {
        let only_lifetimes = sig
            .generics
            .params
            .iter()
            .all(|param| matches!(param, GenericParam::Lifetime(_)));
        let message = if only_lifetimes {
            format!(
                "`{name}` has lifetime parameters; a worker decodes arguments into owned values \
                 and returns owned values, so remove them"
            )
        } else {
            format!(
                "`{name}` is generic; a worker must know the concrete type of every argument to \
                 decode it; make the method non-generic (a concrete type, or an enum of the types)"
            )
        };
        error(&sig.generics, message);
    }
    match &method.receiver.kind {
        ReceiverKind::Reference(_, Some(lifetime), _) => error(
            lifetime,
            format!("`{name}`: write `&self` or `&mut self`, without a lifetime"),
        ),
        ReceiverKind::Reference(_, None, _) => {}
        ReceiverKind::Typed(_, ty) if is_ref_self(ty) => {}
        _ => error(
            method.receiver,
            format!(
                "`{name}` takes `self` by value or in a box; a worker method takes `&self` or \
                 `&mut self`, since the value stays in the worker process between calls"
            ),
        ),
    }
    for arg in &method.args {
        let original = arg.original;
        if arg.ident.is_none() {
            error(
                &original.pat,
                format!(
                    "an argument of `{name}` is a pattern, not a plain name; the proxy needs a \
                     name for each argument: write `name: Type` and destructure in the body"
                ),
            );
        }
        let ty = ungroup(&original.ty);
        if let Some(impl_trait) = find(ty).impl_trait {
            error(
                impl_trait,
                format!(
                    "`impl Trait` makes `{name}` generic; a worker must know the concrete type of \
                     every argument to decode it; take a concrete type"
                ),
            );
            continue;
        }
        let inner = match ty {
            Type::Reference(reference) => {
                if reference.mutability.is_some() {
                    error(
                        ty,
                        format!(
                            "`&mut` arguments cannot be proxied: `{name}` runs in another \
                             process, so changes through `&mut` would not come back; take the \
                             value (or `&T`) and return what changed"
                        ),
                    );
                    continue;
                }
                if let Some(lifetime) = &reference.lifetime {
                    error(
                        lifetime,
                        format!(
                            "a worker decodes the arguments of `{name}` into owned values, so a \
                             borrowed argument cannot name a lifetime; remove the lifetime"
                        ),
                    );
                }
                &*reference.elem
            }
            ty => ty,
        };
        let found = find(inner);
        if let Some(borrow) = found.borrow() {
            error(
                borrow,
                format!(
                    "this argument of `{name}` borrows inside its type; a worker decodes \
                     arguments into owned values, and only a whole argument may be borrowed \
                     (`&T`, `&[T]`, `&str`); use an owned type here (`String`, `Vec<T>`, `T`)"
                ),
            );
        }
    }
    if let ReturnType::Type(_, ty) = &sig.output {
        let found = find(ty);
        if let Some(impl_trait) = found.impl_trait {
            error(
                impl_trait,
                format!(
                    "`{name}` returns `impl Trait`; a worker must know the concrete type to send \
                     the value back; return a concrete type"
                ),
            );
        } else if let Type::Never(never) = ungroup(ty) {
            error(
                never,
                format!(
                    "`{name}` never returns, so a proxy would have nothing to wait for; return `()`"
                ),
            );
        } else if let Some(borrow) = found.borrow() {
            error(
                borrow,
                format!(
                    "`{name}` returns a borrow, which cannot come back from another process; \
                     return an owned value (`Vec<T>` for `&[T]`, `String` for `&str`, `T` for `&T`)"
                ),
            );
        }
    }
    ok
}

/// Two names that differ only in underscores or case become one variant.
fn check_variants(input: &mut Input, cx: &Ctxt) {
    let args = input.ident.map(|ident| ident.unraw().to_string());
    let args = args.as_deref().unwrap_or("the worker");
    let mut seen: HashMap<String, String> = HashMap::new();
    input.methods.retain(|method| {
        let variant = method.variant.to_string();
        match seen.get(&variant) {
            None => {
                seen.insert(variant, method.name.clone());
                true
            }
            // The same name twice: rustc reports the duplicate definition itself.
            Some(first) if *first == method.name => false,
            Some(first) => {
                cx.error_spanned_by(
                    method.ident,
                    format!(
                        "`{first}` and `{}` both become the variant `{variant}` of `{args}Args` \
                         and `{args}Return`; rename one of them",
                        method.name
                    ),
                );
                false
            }
        }
    });
}

fn check_hook(hook: &Hook, cx: &Ctxt) -> bool {
    let (expected, mutable_ok) = match hook.kind {
        HookKind::Setup => (
            "is a lifecycle hook run in each worker after the fork, not proxied; it must be \
             `fn setup(&mut self)` or `fn setup(&self)`, with no arguments and no return value",
            true,
        ),
        HookKind::Teardown => (
            "is a lifecycle hook run in each worker before it exits, not proxied; it must be \
             `fn teardown(&mut self)` or `fn teardown(&self)`, with no arguments and no return \
             value",
            true,
        ),
        HookKind::CheckEnvironment => (
            "is a lifecycle hook run in the parent before any fork, not proxied; it must be \
             `fn check_environment(&self) -> Vec<String>`",
            false,
        ),
    };
    match hook_offense(hook, mutable_ok) {
        Some(tokens) => {
            cx.error_spanned_by(tokens, format!("`{}` {expected}", hook.kind.name()));
            false
        }
        None => true,
    }
}

/// The first part of a hook's signature that is not as expected.
fn hook_offense<'a>(hook: &Hook<'a>, mutable_ok: bool) -> Option<&'a dyn quote::ToTokens> {
    let function = hook.original;
    let sig = &function.sig;
    if let Some(attr) = function.attrs.iter().find(|a| a.path().is_ident("cfg")) {
        return Some(attr);
    }
    if let Some(asyncness) = &sig.asyncness {
        return Some(asyncness);
    }
    if let Safety::Unsafe(unsafety) = &sig.safety {
        return Some(unsafety);
    }
    if !sig.generics.params.is_empty() {
        return Some(&sig.generics);
    }
    let Some(receiver) = sig.receiver() else {
        return Some(&sig.ident);
    };
    match &receiver.kind {
        ReceiverKind::Reference(_, None, None) => {}
        ReceiverKind::Reference(_, None, Some(_)) if mutable_ok => {}
        _ => return Some(receiver),
    }
    if let Some(extra) = sig.inputs.iter().nth(1) {
        return Some(extra);
    }
    match (&sig.output, hook.kind) {
        (ReturnType::Default, HookKind::CheckEnvironment) => Some(&sig.ident),
        (ReturnType::Type(_, ty), HookKind::Setup | HookKind::Teardown) if !matches!(ungroup(ty), Type::Tuple(t) if t.elems.is_empty()) => {
            Some(&**ty)
        }
        _ => None,
    }
}

/// `self: &Self` or `self: &mut Self`, the long way of writing `&self`.
fn is_ref_self(ty: &Type) -> bool {
    matches!(ungroup(ty), Type::Reference(r) if r.lifetime.is_none()
        && matches!(ungroup(&r.elem), Type::Path(p) if p.qself.is_none() && p.path.is_ident("Self")))
}

/// What a type holds that a worker cannot decode into, whatever the serde impls say.
#[derive(Default)]
struct Found<'a> {
    impl_trait: Option<&'a TypeImplTrait>,
    reference: Option<&'a TypeReference>,
    lifetime: Option<&'a Lifetime>,
}

impl<'a> Found<'a> {
    /// The first borrow: a reference, or a lifetime other than `'static`.
    fn borrow(&self) -> Option<&'a dyn quote::ToTokens> {
        match (self.reference, self.lifetime) {
            (Some(reference), _) => Some(reference),
            (None, Some(lifetime)) => Some(lifetime),
            (None, None) => None,
        }
    }
}

fn find(ty: &Type) -> Found<'_> {
    let mut found = Found::default();
    found.visit_type(ty);
    found
}

impl<'ast> Visit<'ast> for Found<'ast> {
    fn visit_type_impl_trait(&mut self, ty: &'ast TypeImplTrait) {
        self.impl_trait.get_or_insert(ty);
    }

    fn visit_type_reference(&mut self, ty: &'ast TypeReference) {
        self.reference.get_or_insert(ty);
        visit::visit_type_reference(self, ty);
    }

    fn visit_lifetime(&mut self, lifetime: &'ast Lifetime) {
        if lifetime.ident != "static" {
            self.lifetime.get_or_insert(lifetime);
        }
    }
}

#[cfg(test)]
mod tests {
    use syn::{ItemImpl, parse_quote};

    use super::*;

    struct Checked {
        workable: bool,
        methods: Vec<String>,
        hooks: Vec<HookKind>,
        errors: Vec<String>,
    }

    fn check_impl(item: &ItemImpl) -> Checked {
        let cx = Ctxt::new();
        let mut input = Input::from_syn(item);
        let workable = check(&mut input, &cx);
        let methods = input.methods.iter().map(|m| m.name.clone()).collect();
        let hooks = input.hooks.iter().map(|h| h.kind).collect();
        let errors = match cx.check() {
            Ok(()) => Vec::new(),
            Err(errors) => errors.into_iter().map(|e| e.to_string()).collect(),
        };
        Checked {
            workable,
            methods,
            hooks,
            errors,
        }
    }

    /// The errors for one method, which must be dropped.
    fn method_errors(item: ItemImpl) -> Vec<String> {
        let checked = check_impl(&item);
        assert!(checked.workable);
        assert!(checked.methods.is_empty(), "{:?}", checked.methods);
        checked.errors
    }

    fn assert_one_error(item: ItemImpl, start: &str) {
        let errors = method_errors(item);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0].starts_with(start),
            "{:?}\ndoes not start with\n{start:?}",
            errors[0]
        );
    }

    #[test]
    fn a_good_impl_passes() {
        let checked = check_impl(&parse_quote! {
            impl Primes {
                pub fn new() -> Self { Primes }
                pub fn sieve(&self, start: u64, end: u64) -> Vec<u64> { todo!() }
                pub fn is_prime(&mut self, n: u64) -> bool { todo!() }
                pub fn among(&self, numbers: &[u64], label: &str, p: &Point) -> Vec<u64> { todo!() }
                pub fn text(&self, text: std::borrow::Cow<'static, str>) {}
                pub fn long(self: &Self, mut n: u64) -> u64 { n += 1; n }
                pub fn raw(&self, r#type: u8) -> Self { todo!() }
                pub fn setup(&self) {}
                pub fn teardown(&mut self) -> () {}
                pub fn check_environment(&self) -> Vec<String> { vec![] }
                fn helper(&self, x: &mut u8) -> &str { "" }
            }
        });
        assert!(checked.errors.is_empty(), "{:#?}", checked.errors);
        assert!(checked.workable);
        assert_eq!(
            checked.methods,
            ["sieve", "is_prime", "among", "text", "long", "raw"]
        );
        assert_eq!(
            checked.hooks,
            [
                HookKind::Setup,
                HookKind::Teardown,
                HookKind::CheckEnvironment
            ]
        );
    }

    #[test]
    fn every_reserved_name_is_refused() {
        for name in RESERVED {
            let ident = syn::Ident::new(name, proc_macro2::Span::call_site());
            let errors = method_errors(parse_quote!(impl Primes { pub fn #ident(&self) {} }));
            assert_eq!(errors.len(), 1);
            assert!(
                errors[0].starts_with(&format!("`{name}` clashes with `")),
                "{}",
                errors[0]
            );
            assert!(
                errors[0].contains("`PrimesMediator") || errors[0].contains("`PrimesPool"),
                "{}",
                errors[0]
            );
            assert!(
                errors[0].ends_with(&format!("(for example `{name}_`)")),
                "{}",
                errors[0]
            );
        }
        let errors = method_errors(parse_quote!(impl Primes { pub fn workers(&self) {} }));
        assert_eq!(
            errors,
            [
                "`workers` clashes with `Mediator::workers`, a method of the generated \
              `PrimesMediator`; rename the method (for example `workers_`)"
            ]
        );
    }

    #[test]
    fn reserved_names_only_matter_for_proxied_methods() {
        let checked = check_impl(&parse_quote! {
            impl Primes {
                pub fn workers() -> usize { 4 }
                fn wait(&self) {}
            }
        });
        assert!(checked.errors.is_empty());
    }

    #[test]
    fn method_shapes_that_cannot_be_proxied() {
        assert_one_error(
            parse_quote!(impl P { pub fn f<T>(&self, t: T) {} }),
            "`f` is generic",
        );
        assert_one_error(
            parse_quote!(impl P { pub fn f<'a>(&self) {} }),
            "`f` has lifetime parameters",
        );
        assert_one_error(
            parse_quote!(impl P { pub async fn f(&self) {} }),
            "`f` is `async`",
        );
        assert_one_error(
            parse_quote!(impl P { pub unsafe fn f(&self) {} }),
            "`f` is an `unsafe fn`",
        );
        assert_one_error(
            parse_quote!(impl P { pub fn f(self) {} }),
            "`f` takes `self` by value or in a box",
        );
        assert_one_error(
            parse_quote!(impl P { pub fn f(mut self) {} }),
            "`f` takes `self` by value or in a box",
        );
        assert_one_error(
            parse_quote!(impl P { pub fn f(self: Box<Self>) {} }),
            "`f` takes `self` by value or in a box",
        );
        assert_one_error(
            parse_quote!(impl P { pub fn f(self: &'static Self) {} }),
            "`f` takes `self` by value or in a box",
        );
        assert_one_error(
            parse_quote!(impl P { pub fn f(&'static self) {} }),
            "`f`: write `&self` or `&mut self`, without a lifetime",
        );
        assert_one_error(
            parse_quote!(impl P { #[cfg(unix)] pub fn f(&self) {} }),
            "#[cfg] on a proxied method is not supported",
        );
    }

    #[test]
    fn argument_patterns_must_be_names() {
        for item in [
            parse_quote!(impl P { pub fn f(&self, (a, b): (u8, u8)) {} }),
            parse_quote!(impl P { pub fn f(&self, _: u8) {} }),
            parse_quote!(impl P { pub fn f(&self, ref a: u8) {} }),
            parse_quote!(impl P { pub fn f(&self, a @ 1..=3: u8) {} }),
        ] {
            assert_one_error(item, "an argument of `f` is a pattern, not a plain name");
        }
    }

    #[test]
    fn argument_types_that_cannot_be_proxied() {
        assert_one_error(
            parse_quote!(impl P { pub fn f(&self, a: impl Into<u64>) {} }),
            "`impl Trait` makes `f` generic",
        );
        assert_one_error(
            parse_quote!(impl P { pub fn f(&self, a: Vec<impl Into<u64>>) {} }),
            "`impl Trait` makes `f` generic",
        );
        assert_one_error(
            parse_quote!(impl P { pub fn f(&self, a: &mut Vec<u64>) {} }),
            "`&mut` arguments cannot be proxied",
        );
        assert_one_error(
            parse_quote!(impl P { pub fn f(&self, a: &'static str) {} }),
            "a worker decodes the arguments of `f` into owned values, so a borrowed argument \
             cannot name a lifetime",
        );
        for item in [
            parse_quote!(impl P { pub fn f(&self, a: Vec<&str>) {} }),
            parse_quote!(impl P { pub fn f(&self, a: &Option<&u8>) {} }),
            parse_quote!(impl P { pub fn f(&self, a: Cow<'_, str>) {} }),
            parse_quote!(impl P { pub fn f(&self, a: &&u8) {} }),
        ] {
            assert_one_error(item, "this argument of `f` borrows inside its type");
        }
    }

    #[test]
    fn return_types_that_cannot_be_proxied() {
        assert_one_error(
            parse_quote!(impl P { pub fn f(&self) -> &str { "" } }),
            "`f` returns a borrow",
        );
        assert_one_error(
            parse_quote!(impl P { pub fn f(&self) -> Option<&[u8]> { None } }),
            "`f` returns a borrow",
        );
        assert_one_error(
            parse_quote!(impl P { pub fn f(&self) -> Cow<'_, str> { todo!() } }),
            "`f` returns a borrow",
        );
        assert_one_error(
            parse_quote!(impl P { pub fn f(&self) -> impl Iterator<Item = u8> { 0..1 } }),
            "`f` returns `impl Trait`",
        );
        assert_one_error(
            parse_quote!(impl P { pub fn f(&self) -> ! { loop {} } }),
            "`f` never returns",
        );
    }

    #[test]
    fn every_problem_of_every_method_is_reported() {
        let checked = check_impl(&parse_quote! {
            impl P {
                pub async fn workers<T>(self, (a, b): (T, T), c: &mut u8) -> &str { "" }
                pub fn fine(&self) {}
                pub unsafe fn g(&self) {}
            }
        });
        assert!(checked.workable);
        assert_eq!(checked.methods, ["fine"]);
        let starts: Vec<_> = checked
            .errors
            .iter()
            .map(|e| e.split([';', ':', ',']).next().unwrap())
            .collect();
        assert_eq!(
            starts,
            [
                "`workers` clashes with `Mediator",
                "`workers` is `async`",
                "`workers` is generic",
                "`workers` takes `self` by value or in a box",
                "an argument of `workers` is a pattern",
                "`&mut` arguments cannot be proxied",
                "`workers` returns a borrow",
                "`g` is an `unsafe fn`",
            ]
        );
    }

    #[test]
    fn variants_must_differ() {
        let checked = check_impl(&parse_quote! {
            impl P {
                pub fn is_prime(&self) {}
                pub fn isPrime(&self) {}
                pub fn is_prime(&self) {}
            }
        });
        assert_eq!(checked.methods, ["is_prime"]);
        // The exact duplicate is left to rustc's "duplicate definitions" error.
        assert_eq!(
            checked.errors,
            [
                "`is_prime` and `isPrime` both become the variant `IsPrime` of `PArgs` and \
              `PReturn`; rename one of them"
            ]
        );
    }

    #[test]
    fn hooks_need_their_signature() {
        let bad: [ItemImpl; 10] = [
            parse_quote!(impl P { pub fn setup(&mut self, n: u8) {} }),
            parse_quote!(impl P { pub fn setup(self) {} }),
            parse_quote!(impl P { pub fn setup() {} }),
            parse_quote!(impl P { pub fn setup(&mut self) -> bool { true } }),
            parse_quote!(impl P { pub async fn setup(&mut self) {} }),
            parse_quote!(impl P { pub fn teardown<T>(&mut self) {} }),
            parse_quote!(impl P { #[cfg(unix)] pub fn teardown(&mut self) {} }),
            parse_quote!(impl P { pub fn check_environment(&mut self) -> Vec<String> { vec![] } }),
            parse_quote!(impl P { pub fn check_environment(&self) {} }),
            parse_quote!(impl P { pub unsafe fn check_environment(&self) -> Vec<String> { vec![] } }),
        ];
        for item in bad {
            let checked = check_impl(&item);
            assert!(checked.hooks.is_empty());
            assert_eq!(checked.errors.len(), 1, "{:?}", checked.errors);
            assert!(
                checked.errors[0].contains("is a lifecycle hook"),
                "{}",
                checked.errors[0]
            );
        }
        let checked = check_impl(&parse_quote! {
            impl P { pub fn check_environment(&self) {} }
        });
        assert_eq!(
            checked.errors,
            [
                "`check_environment` is a lifecycle hook run in the parent before any fork, not \
              proxied; it must be `fn check_environment(&self) -> Vec<String>`"
            ]
        );
    }

    #[test]
    fn impl_blocks_that_cannot_be_worked() {
        for (item, start) in [
            (
                parse_quote!(impl Clone for P { fn clone(&self) -> Self { P } }),
                "#[worker] goes on an inherent impl block",
            ),
            (
                parse_quote!(
                    impl<T> Sieve<T> {
                        pub fn f(&self) {}
                    }
                ),
                "#[worker] cannot go on a generic impl block",
            ),
            (
                parse_quote!(impl dyn Speak { pub fn f(&self) {} }),
                "#[worker] needs a named type",
            ),
            (
                parse_quote!(impl View<'_> { pub fn f(&self) {} }),
                "the type of a worker must be `'static`",
            ),
        ] as [(ItemImpl, &str); 4]
        {
            let checked = check_impl(&item);
            assert!(!checked.workable);
            assert_eq!(checked.errors.len(), 1, "{:?}", checked.errors);
            assert!(
                checked.errors[0].starts_with(start),
                "{}",
                checked.errors[0]
            );
        }
        assert!(check_impl(&parse_quote!(impl Wrapper<'static, u8> {})).workable);
    }
}
