//! The model of the impl block: what the macro reads from the user's code.
//!
//! Reading does not judge. Every `pub fn` with a `self` receiver becomes a [`Method`] whatever
//! its shape, every function named like a lifecycle hook becomes a [`Hook`], and `valid.rs`
//! decides what can be generated. The model keeps the syn nodes, so errors and generated code
//! carry the user's spans.

use syn::ext::IdentExt;
use syn::visit_mut::{self, VisitMut};
use syn::{
    Attribute, ExprPath, FnArg, Ident, ImplItem, ImplItemFn, ItemImpl, Pat, PatType, Receiver,
    ReturnType, Type, TypePath, Visibility,
};

/// The impl block under `#[worker]`.
pub struct Input<'a> {
    pub original: &'a ItemImpl,
    /// The name generated items are built from (`Primes` for `PrimesMediator`): the last
    /// segment of the self type's path. `None` when the self type is not a path.
    pub ident: Option<&'a Ident>,
    /// The proxied methods, in source order; a method's index is its position here.
    pub methods: Vec<Method<'a>>,
    /// `setup`, `teardown` and `check_environment`, if written.
    pub hooks: Vec<Hook<'a>>,
}

/// A `pub fn` with a `self` receiver: one proxy method, one variant of each enum.
pub struct Method<'a> {
    pub original: &'a ImplItemFn,
    /// The method's name, as written (maybe raw, like `r#type`).
    pub ident: &'a Ident,
    /// The name without `r#`: the string in `Worker::METHODS`.
    pub name: String,
    /// The variant of `{Type}Args` and `{Type}Return`: the name in UpperCamelCase.
    pub variant: Ident,
    pub docs: Vec<&'a Attribute>,
    pub receiver: &'a Receiver,
    pub args: Vec<Arg<'a>>,
    pub ret: Ret<'a>,
}

/// One argument after the receiver.
pub struct Arg<'a> {
    pub original: &'a PatType,
    /// The argument's name; `None` when the pattern is not a plain name.
    pub ident: Option<&'a Ident>,
    /// The type as written, with `Self` replaced by the self type.
    pub ty: Type,
    pub shape: Shape,
}

/// How an argument crosses the process boundary.
pub enum Shape {
    /// `T`: decoded as `T`, passed by value.
    Value,
    /// `&T`: decoded as `T`, passed by reference.
    Ref(Type),
    /// `&[T]`: decoded as `Vec<T>`, passed by reference.
    Slice(Type),
    /// `&str`: decoded as `String`, passed by reference.
    Str,
    /// `Vec<u8>`, or `&[u8]`/`&Vec<u8>` when `by_ref`: moves as one block of bytes
    /// (`serde_bytes`), decoded as `Vec<u8>`.
    Bytes { by_ref: bool },
}

/// What a method returns.
pub struct Ret<'a> {
    /// The type as written; `None` for no return type.
    pub original: Option<&'a Type>,
    /// The type with `Self` replaced; `None` for `()` written or not.
    pub ty: Option<Type>,
    /// `Vec<u8>`: moves as bytes.
    pub bytes: bool,
}

/// A lifecycle hook the `Worker` impl forwards to.
pub struct Hook<'a> {
    pub kind: HookKind,
    pub original: &'a ImplItemFn,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HookKind {
    Setup,
    Teardown,
    CheckEnvironment,
}

impl HookKind {
    fn of(ident: &Ident) -> Option<HookKind> {
        match ident.unraw().to_string().as_str() {
            "setup" => Some(HookKind::Setup),
            "teardown" => Some(HookKind::Teardown),
            "check_environment" => Some(HookKind::CheckEnvironment),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            HookKind::Setup => "setup",
            HookKind::Teardown => "teardown",
            HookKind::CheckEnvironment => "check_environment",
        }
    }
}

impl<'a> Input<'a> {
    pub fn from_syn(item: &'a ItemImpl) -> Self {
        let ident = match ungroup(&item.self_ty) {
            Type::Path(path) if path.qself.is_none() => path.path.segments.last().map(|s| &s.ident),
            _ => None,
        };
        let mut methods = Vec::new();
        let mut hooks = Vec::new();
        for impl_item in &item.items {
            let ImplItem::Fn(function) = impl_item else {
                continue;
            };
            if let Some(kind) = HookKind::of(&function.sig.ident) {
                hooks.push(Hook {
                    kind,
                    original: function,
                });
            } else if let (Visibility::Public(_), Some(receiver)) =
                (&function.vis, function.sig.receiver())
            {
                methods.push(Method::from_syn(function, receiver, &item.self_ty));
            }
        }
        Input {
            original: item,
            ident,
            methods,
            hooks,
        }
    }
}

impl<'a> Method<'a> {
    fn from_syn(function: &'a ImplItemFn, receiver: &'a Receiver, self_ty: &Type) -> Self {
        let ident = &function.sig.ident;
        let name = ident.unraw().to_string();
        let args = function
            .sig
            .inputs
            .iter()
            .filter_map(|arg| match arg {
                FnArg::Typed(arg) => Some(Arg::from_syn(arg, self_ty)),
                FnArg::Receiver(_) => None,
            })
            .collect();
        let ret = match &function.sig.output {
            ReturnType::Default => Ret {
                original: None,
                ty: None,
                bytes: false,
            },
            ReturnType::Type(_, ty) => {
                let resolved = replace_self(ty, self_ty);
                Ret {
                    original: Some(ty),
                    bytes: is_vec_u8(&resolved),
                    ty: (!is_unit(&resolved)).then_some(resolved),
                }
            }
        };
        Method {
            original: function,
            ident,
            variant: Ident::new(&upper_camel(&name), ident.span()),
            name,
            docs: function
                .attrs
                .iter()
                .filter(|attr| attr.path().is_ident("doc"))
                .collect(),
            receiver,
            args,
            ret,
        }
    }
}

impl<'a> Arg<'a> {
    fn from_syn(original: &'a PatType, self_ty: &Type) -> Self {
        let ident = match &*original.pat {
            Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => Some(&pat.ident),
            _ => None,
        };
        let ty = replace_self(&original.ty, self_ty);
        Arg {
            original,
            ident,
            shape: Shape::of(&ty),
            ty,
        }
    }
}

impl Shape {
    fn of(ty: &Type) -> Shape {
        let Type::Reference(reference) = ungroup(ty) else {
            return if is_vec_u8(ty) {
                Shape::Bytes { by_ref: false }
            } else {
                Shape::Value
            };
        };
        let elem = ungroup(&reference.elem);
        if is_vec_u8(elem) {
            return Shape::Bytes { by_ref: true };
        }
        match elem {
            Type::Slice(slice) if is_u8(&slice.elem) => Shape::Bytes { by_ref: true },
            Type::Slice(slice) => Shape::Slice((*slice.elem).clone()),
            elem if is_primitive(elem, "str") => Shape::Str,
            _ => Shape::Ref((*reference.elem).clone()),
        }
    }
}

/// The type inside any invisible groups (from `macro_rules!` `$t:ty`) and parentheses.
pub fn ungroup(mut ty: &Type) -> &Type {
    loop {
        match ty {
            Type::Group(group) => ty = &group.elem,
            Type::Paren(paren) => ty = &paren.elem,
            _ => return ty,
        }
    }
}

fn is_unit(ty: &Type) -> bool {
    matches!(ungroup(ty), Type::Tuple(tuple) if tuple.elems.is_empty())
}

fn is_u8(ty: &Type) -> bool {
    is_primitive(ty, "u8")
}

/// `name`, or a path ending in `primitive::name` (`::core::primitive::str`).
fn is_primitive(ty: &Type, name: &str) -> bool {
    let Type::Path(path) = ungroup(ty) else {
        return false;
    };
    let segments: Vec<_> = path.path.segments.iter().rev().collect();
    let plain = |i: usize, ident: &str| {
        segments
            .get(i)
            .is_some_and(|s| s.ident == ident && s.arguments.is_none())
    };
    path.qself.is_none()
        && plain(0, name)
        && (segments.len() == 1 && path.path.leading_colon.is_none() || plain(1, "primitive"))
}

/// `Vec<u8>`, however the path to `Vec` is spelled.
fn is_vec_u8(ty: &Type) -> bool {
    let Type::Path(path) = ungroup(ty) else {
        return false;
    };
    let Some(last) = path.path.segments.last() else {
        return false;
    };
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return false;
    };
    path.qself.is_none()
        && last.ident == "Vec"
        && args.args.len() == 1
        && matches!(&args.args[0], syn::GenericArgument::Type(elem) if is_u8(elem))
}

/// `is_prime` → `IsPrime`, `r#type` → `Type`.
pub fn upper_camel(name: &str) -> String {
    let mut camel = String::new();
    for word in name.split('_') {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            camel.extend(first.to_uppercase());
            camel.push_str(chars.as_str());
        }
    }
    if syn::parse_str::<Ident>(&camel).is_err() {
        camel.insert_str(0, "Method");
    }
    camel
}

/// `ty` with every `Self` replaced by the self type: generated items (the enums, the mediator)
/// have a `Self` of their own.
fn replace_self(ty: &Type, self_ty: &Type) -> Type {
    let mut ty = ty.clone();
    ReplaceSelf { self_ty }.visit_type_mut(&mut ty);
    ty
}

struct ReplaceSelf<'a> {
    self_ty: &'a Type,
}

impl ReplaceSelf<'_> {
    /// `Self::Rest` becomes `<SelfTy>::Rest`.
    fn qualify(&self, qself: &mut Option<syn::QSelf>, path: &mut syn::Path) {
        if qself.is_some() || path.leading_colon.is_some() || path.segments.len() < 2 {
            return;
        }
        if path.segments[0].ident != "Self" {
            return;
        }
        let rest: Vec<_> = path.segments.iter().skip(1).collect();
        let self_ty = self.self_ty;
        let qualified: ExprPath = syn::parse_quote!(<#self_ty>::#(#rest)::*);
        *qself = qualified.qself;
        *path = qualified.path;
    }
}

impl VisitMut for ReplaceSelf<'_> {
    fn visit_type_mut(&mut self, ty: &mut Type) {
        if let Type::Path(TypePath {
            qself: None, path, ..
        }) = ty
            && path.is_ident("Self")
        {
            *ty = self.self_ty.clone();
            return;
        }
        visit_mut::visit_type_mut(self, ty);
    }

    fn visit_type_path_mut(&mut self, ty: &mut TypePath) {
        self.qualify(&mut ty.qself, &mut ty.path);
        visit_mut::visit_type_path_mut(self, ty);
    }

    fn visit_expr_path_mut(&mut self, expr: &mut ExprPath) {
        self.qualify(&mut expr.qself, &mut expr.path);
        visit_mut::visit_expr_path_mut(self, expr);
    }
}

#[cfg(test)]
mod tests {
    use quote::ToTokens;
    use syn::parse_quote;

    use super::*;

    fn tokens(tokens: &impl ToTokens) -> String {
        tokens.to_token_stream().to_string()
    }

    fn shape(item: &ItemImpl) -> Vec<String> {
        let input = Input::from_syn(item);
        input.methods[0]
            .args
            .iter()
            .map(|arg| match &arg.shape {
                Shape::Value => "value".to_owned(),
                Shape::Ref(ty) => format!("ref {}", tokens(ty)),
                Shape::Slice(ty) => format!("slice {}", tokens(ty)),
                Shape::Str => "str".to_owned(),
                Shape::Bytes { by_ref } => format!("bytes by_ref={by_ref}"),
            })
            .collect()
    }

    #[test]
    fn proxied_are_pub_fns_with_a_receiver_hooks_go_by_name() {
        let item: ItemImpl = parse_quote! {
            impl Primes {
                pub fn new() -> Self { Primes }
                pub fn sieve(&self) {}
                fn helper(&self) {}
                pub(crate) fn internal(&self) {}
                pub fn consume(self) {}
                pub fn setup(&mut self) {}
                fn teardown(&mut self) {}
                pub fn check_environment() {}
                const N: u32 = 1;
            }
        };
        let input = Input::from_syn(&item);
        assert_eq!(input.ident.unwrap(), "Primes");
        let names: Vec<_> = input.methods.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["sieve", "consume"]);
        let hooks: Vec<_> = input.hooks.iter().map(|h| h.kind).collect();
        assert_eq!(
            hooks,
            [
                HookKind::Setup,
                HookKind::Teardown,
                HookKind::CheckEnvironment
            ]
        );
    }

    #[test]
    fn the_name_comes_from_the_last_path_segment() {
        let item: ItemImpl = parse_quote!(impl crate::pools::Sieve<u64> {});
        assert_eq!(Input::from_syn(&item).ident.unwrap(), "Sieve");
        let item: ItemImpl = parse_quote!(impl [u8] {});
        assert!(Input::from_syn(&item).ident.is_none());
    }

    #[test]
    fn argument_shapes() {
        let item: ItemImpl = parse_quote! {
            impl P {
                pub fn f(
                    &self,
                    a: u64,
                    b: &[u64],
                    c: &str,
                    d: &::core::primitive::str,
                    e: &Point,
                    f: Vec<u8>,
                    g: &[u8],
                    h: &std::vec::Vec<u8>,
                    i: Vec<u16>,
                    j: &(u8, u8),
                ) {}
            }
        };
        assert_eq!(
            shape(&item),
            [
                "value",
                "slice u64",
                "str",
                "str",
                "ref Point",
                "bytes by_ref=false",
                "bytes by_ref=true",
                "bytes by_ref=true",
                "value",
                "ref (u8 , u8)",
            ]
        );
    }

    #[test]
    fn argument_names_and_patterns() {
        let item: ItemImpl = parse_quote! {
            impl P { pub fn f(&self, mut a: u8, r#type: u8, (b, c): (u8, u8), ref d: u8, _: u8) {} }
        };
        let input = Input::from_syn(&item);
        let idents: Vec<_> = input.methods[0]
            .args
            .iter()
            .map(|arg| arg.ident.map(ToString::to_string))
            .collect();
        assert_eq!(
            idents,
            [Some("a".into()), Some("r#type".into()), None, None, None]
        );
    }

    #[test]
    fn return_types() {
        let item: ItemImpl = parse_quote! {
            impl P {
                pub fn a(&self) {}
                pub fn b(&self) -> () {}
                pub fn c(&self) -> Vec<u8> { todo!() }
                pub fn d(&self) -> Option<Vec<u8>> { todo!() }
            }
        };
        let input = Input::from_syn(&item);
        let rets: Vec<_> = input
            .methods
            .iter()
            .map(|m| (m.ret.ty.as_ref().map(tokens), m.ret.bytes))
            .collect();
        assert_eq!(
            rets,
            [
                (None, false),
                (None, false),
                (Some("Vec < u8 >".into()), true),
                (Some("Option < Vec < u8 > >".into()), false),
            ]
        );
    }

    #[test]
    fn self_is_replaced_by_the_self_type() {
        let item: ItemImpl = parse_quote! {
            impl Cell<u32> {
                pub fn f(&self, a: Self, b: &[Self], c: Option<Self::Id>, d: [u8; Self::N]) -> Vec<Self> {
                    todo!()
                }
            }
        };
        let input = Input::from_syn(&item);
        let method = &input.methods[0];
        let args: Vec<_> = method.args.iter().map(|a| tokens(&a.ty)).collect();
        assert_eq!(
            args,
            [
                "Cell < u32 >",
                "& [Cell < u32 >]",
                "Option < < Cell < u32 > > :: Id >",
                "[u8 ; < Cell < u32 > > :: N]",
            ]
        );
        assert_eq!(
            tokens(method.ret.ty.as_ref().unwrap()),
            "Vec < Cell < u32 > >"
        );
    }

    #[test]
    fn variant_names() {
        assert_eq!(upper_camel("is_prime"), "IsPrime");
        assert_eq!(upper_camel("sieve"), "Sieve");
        assert_eq!(upper_camel("type"), "Type");
        assert_eq!(upper_camel("_private_ish"), "PrivateIsh");
        assert_eq!(upper_camel("a__b"), "AB");
        assert_eq!(upper_camel("isPrime"), "IsPrime");
        assert_eq!(upper_camel("_1st"), "Method1st");
        let item: ItemImpl = parse_quote!(impl P { pub fn r#match(&self) {} });
        let input = Input::from_syn(&item);
        assert_eq!(input.methods[0].name, "match");
        assert_eq!(input.methods[0].variant, "Match");
    }
}
