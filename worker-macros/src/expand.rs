//! Code generation: from the checked model to the enums, the mediator and the `Worker` impl.
//!
//! Everything generated reaches the runtime through `<crate>::__private` and names `core`/`std`
//! items through it too, so it needs no prelude and no imports in the user's module. Local
//! names start with `__`, so a user argument named `args` or `ret` cannot shadow them.
//! `tests/expand/primes.expanded.rs` shows the output for a typical worker.

use proc_macro2::{Group, Ident, Literal, Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Index, Item, Path};

use crate::ast::{Arg, Hook, HookKind, Input, Method, Shape};
use crate::attr::Attr;
use crate::ctxt::Ctxt;
use crate::{fallback, valid};

/// The whole macro: reads, checks, and writes, or reports every error at once.
pub fn worker(args: TokenStream, input: TokenStream) -> TokenStream {
    let item = match syn::parse2::<Item>(input.clone()) {
        Ok(Item::Impl(item)) => item,
        Ok(_) => {
            let error = syn::Error::new(
                item_keyword(&input),
                "#[worker] goes on an inherent impl block, like `impl Primes { ... }`, whose \
                 public methods run in worker processes",
            );
            return fallback::expand(input, TokenStream::new(), error);
        }
        // Not an item: leave the syntax error to rustc.
        Err(_) => return input,
    };
    let cx = Ctxt::new();
    let attr = Attr::parse(args, &cx);
    let mut model = Input::from_syn(&item);
    let workable = valid::check(&mut model, &cx);
    let generated = match (attr, model.ident) {
        (Some(attr), Some(ident)) if workable => Generator::new(&model, ident, &attr.krate).all(),
        _ => TokenStream::new(),
    };
    match cx.check() {
        Ok(()) => quote! {
            #input
            #generated
        },
        Err(errors) => fallback::expand(input, generated, errors),
    }
}

/// The span of the keyword saying what the item is (`fn`, `struct`, ...), past its attributes
/// and visibility.
fn item_keyword(input: &TokenStream) -> Span {
    input
        .clone()
        .into_iter()
        .find_map(|token| match token {
            TokenTree::Ident(ident) if ident != "pub" => Some(ident.span()),
            _ => None,
        })
        .unwrap_or_else(Span::call_site)
}

struct Generator<'a> {
    input: &'a Input<'a>,
    /// `<crate>::__private`
    p: TokenStream,
    /// The user's type, as written after `impl`.
    self_ty: &'a syn::Type,
    /// `Primes`, for documentation.
    type_name: String,
    mediator: Ident,
    pool: Ident,
    args: Ident,
    ret: Ident,
}

impl<'a> Generator<'a> {
    fn new(input: &'a Input<'a>, ident: &Ident, krate: &Path) -> Self {
        let name = ident.unraw();
        Generator {
            input,
            p: quote!(#krate::__private),
            self_ty: &input.original.self_ty,
            type_name: name.to_string(),
            mediator: format_ident!("{}Mediator", name, span = ident.span()),
            pool: format_ident!("{}Pool", name, span = ident.span()),
            args: format_ident!("{}Args", name, span = ident.span()),
            ret: format_ident!("{}Return", name, span = ident.span()),
        }
    }

    fn all(&self) -> TokenStream {
        let args_enum = self.args_enum();
        let return_enum = self.return_enum();
        let mediator = self.mediator();
        let pool = self.pool_face();
        let worker_impl = self.worker_impl();
        let checks = self.checks();
        quote! {
            #args_enum
            #return_enum
            #mediator
            #pool
            #worker_impl
            #checks
        }
    }

    /// `pub enum PrimesArgs { Sieve { start: u64, end: u64 }, ... }`
    fn args_enum(&self) -> TokenStream {
        let Generator { args, .. } = self;
        let doc = format!(
            " The arguments of one call to a method of `{}`, decoded: one variant per proxied \
             method. Written by `#[worker]`; see `Worker::decode_args`.",
            self.type_name
        );
        let variants = self.input.methods.iter().map(|method| {
            let variant = &method.variant;
            let doc = format!(" The arguments of `{}::{}`.", self.type_name, method.name);
            let fields = method.args.iter().map(|arg| {
                let ident = arg_ident(arg);
                let ty = self.owned(arg);
                let doc = format!(" `{}`", ident.unraw());
                quote!(#[doc = #doc] #ident: #ty)
            });
            quote!(#[doc = #doc] #variant { #(#fields),* })
        });
        quote! {
            #[doc = #doc]
            #[allow(dead_code, private_interfaces)]
            pub enum #args {
                #(#variants,)*
            }
        }
    }

    /// `pub enum PrimesReturn { Sieve(Vec<u64>), ... }`
    fn return_enum(&self) -> TokenStream {
        let Generator { ret, p, .. } = self;
        let doc = format!(
            " The return value of one call to a method of `{}`, decoded: one variant per \
             proxied method. Written by `#[worker]`; see `Worker::decode_return`.",
            self.type_name
        );
        let variants = self.input.methods.iter().map(|method| {
            let variant = &method.variant;
            let doc = format!(" What `{}::{}` returned.", self.type_name, method.name);
            let ty = match (&method.ret.ty, method.ret.bytes) {
                (_, true) => quote!(#p::std::vec::Vec<#p::core::primitive::u8>),
                (Some(ty), false) => quote!(#ty),
                (None, false) => quote!(()),
            };
            quote!(#[doc = #doc] #variant(#ty))
        });
        quote! {
            #[doc = #doc]
            #[allow(dead_code, private_interfaces)]
            pub enum #ret {
                #(#variants,)*
            }
        }
    }

    /// `pub struct PrimesMediator`, its constructor, its proxies, and `Deref` to `Mediator`.
    fn mediator(&self) -> TokenStream {
        let Generator {
            p,
            self_ty,
            mediator,
            type_name,
            ..
        } = self;
        let doc = [
            format!(
                " The parent's handle on a pool of `{type_name}` workers, written by `#[worker]`."
            ),
            String::new(),
            format!(
                " Each proxied method of `{type_name}` has a proxy here, with the same name and \
                 arguments: it queues a call for a worker process and returns the call's \
                 `Handle` at once. Everything else (`workers`, `timeout`, `wait`, `inline`, ...) \
                 is `Mediator<{type_name}>`, which this dereferences to."
            ),
            String::new(),
            format!(
                " `__W` is always `{type_name}`; leave it out. It exists so that the `Deref` \
                 impl does not name `{type_name}`, which may be private."
            ),
        ];
        let new_doc = " A pool named `alias` (in logs), whose workers each start from a copy of \
                       `value`, inherited through `fork`. No process starts before the first call.";
        let proxies = self
            .input
            .methods
            .iter()
            .enumerate()
            .map(|(index, method)| self.proxy(index, method));
        quote! {
            #(#[doc = #doc])*
            #[allow(dead_code, private_interfaces)]
            pub struct #mediator<__W: #p::Worker = #self_ty> {
                inner: #p::Mediator<__W>,
            }

            #[allow(dead_code, private_interfaces)]
            impl #mediator {
                #[doc = #new_doc]
                pub fn new(
                    alias: impl #p::core::convert::Into<#p::std::string::String>,
                    value: #self_ty,
                ) -> Self {
                    #mediator {
                        inner: #p::Mediator::new(alias, value),
                    }
                }

                #(#proxies)*
            }

            #[automatically_derived]
            impl<__W: #p::Worker> #p::core::ops::Deref for #mediator<__W> {
                type Target = #p::Mediator<__W>;

                fn deref(&self) -> &Self::Target {
                    &self.inner
                }
            }

            #[automatically_derived]
            impl<__W: #p::Worker> #p::core::ops::DerefMut for #mediator<__W> {
                fn deref_mut(&mut self) -> &mut Self::Target {
                    &mut self.inner
                }
            }
        }
    }

    /// `pub fn sieve(&mut self, start: u64, end: u64) -> Result<Handle<Vec<u64>>, CallError>`
    fn proxy(&self, index: usize, method: &Method) -> TokenStream {
        let p = &self.p;
        let ident = method.ident;
        let docs = &method.docs;
        let separator = (!docs.is_empty()).then(|| quote!(#[doc = ""]));
        let note = format!(
            " Proxy of `{}::{}`: queues the call for a worker and returns its handle at once \
             (pass it to `wait`; dropped, the call still runs and its callbacks fire).",
            self.type_name, method.name
        );
        let Parts {
            params,
            encoded,
            ret,
            decode,
            index,
        } = self.parts(index, method);
        // rustc reports a bad argument type here at the method, not at the attribute.
        let submit = respan(quote!(#p::submit), ident.span());
        quote! {
            #(#docs)*
            #separator
            #[doc = #note]
            pub fn #ident(
                &mut self,
                #(#params),*
            ) -> #p::core::result::Result<#p::Handle<#ret>, #p::CallError> {
                #submit(
                    &mut self.inner,
                    #index,
                    #encoded,
                    |__bytes| #decode,
                )
            }
        }
    }

    /// `pub struct PrimesPool`: the shared face, its builder, its proxies returning `Pending`
    /// handles, and `Deref` to `SharedPool`.
    fn pool_face(&self) -> TokenStream {
        let Generator {
            p,
            self_ty,
            pool,
            type_name,
            ..
        } = self;
        let doc = [
            format!(
                " A shared pool of `{type_name}` workers, written by `#[worker]`: `Send + Sync + \
                 Clone`, driven by a thread of its own, usable from any thread and any async \
                 executor."
            ),
            String::new(),
            format!(
                " Each proxied method of `{type_name}` has a proxy here, with the same name and \
                 arguments: it encodes the arguments at once and returns the call's `Pending` \
                 handle, a future that can also `wait()`. Dropping the handle cancels the call. \
                 Everything else (`close`, `shutdown`, `inline`, `stats`, ...) is \
                 `SharedPool<{type_name}>`, which this dereferences to. Make one with \
                 `{pool}::builder` (`.start()`, or `.serve(url)` to take calls from other \
                 machines too), or connect to hosts with `{pool}::remote`."
            ),
            String::new(),
            format!(
                " `__W` is always `{type_name}`; leave it out. It exists so that the `Deref` \
                 impl does not name `{type_name}`, which may be private. `__F` is the pool \
                 behind the proxies: `SharedPool<{type_name}>` (the default), or \
                 `RemotePool<{type_name}>` for a pool connected to hosts on other machines \
                 (`{pool}::remote`), which has no `inline()`."
            ),
        ];
        let builder_doc = " A builder for a shared pool named `alias` (in logs), whose workers \
                           each start from a copy of `value`: its settings and callbacks, then \
                           `start()`, which forks, or `serve(url)`, which also takes the calls \
                           of other machines through Redis.";
        let remote_doc = format!(
            " A builder for a pool whose calls run on the hosts that serve pool `alias` \
             (`{pool}::builder(alias, value).serve(url)`) on other machines, through Redis: \
             its settings, then `connect(url)`. The connected pool has the same proxies and \
             handles, and no `inline()`."
        );
        let proxies = self
            .input
            .methods
            .iter()
            .enumerate()
            .map(|(index, method)| self.pool_proxy(index, method));
        quote! {
            #(#[doc = #doc])*
            #[allow(dead_code, private_interfaces)]
            pub struct #pool<__W: #p::Worker = #self_ty, __F = #p::SharedPool<__W>> {
                inner: __F,
                worker: #p::core::marker::PhantomData<fn() -> __W>,
            }

            #[automatically_derived]
            impl<__W: #p::Worker, __F: #p::core::clone::Clone> #p::core::clone::Clone
                for #pool<__W, __F>
            {
                fn clone(&self) -> Self {
                    #pool {
                        inner: #p::core::clone::Clone::clone(&self.inner),
                        worker: #p::core::marker::PhantomData,
                    }
                }
            }

            // Generic over `__W`, which can only be the worker's own type (`Is`): a worker
            // that is not `Send` still has its mediator, and its pool fails to compile where
            // it is used, saying that `Send` is missing.
            #[allow(dead_code, private_interfaces)]
            impl<__W> #pool<__W>
            where
                __W: #p::Worker + #p::core::marker::Send + 'static + #p::Is<#self_ty>,
            {
                #[doc = #builder_doc]
                pub fn builder(
                    alias: impl #p::core::convert::Into<#p::std::string::String>,
                    value: __W,
                ) -> #p::Builder<__W, Self> {
                    #p::shared_builder(alias, value, |inner| #pool {
                        inner,
                        worker: #p::core::marker::PhantomData,
                    })
                }
            }

            // A connected pool needs no value and no `Send`: only the methods' list.
            #[allow(dead_code, private_interfaces)]
            impl #pool<#self_ty> {
                #[doc = #remote_doc]
                pub fn remote(
                    alias: impl #p::core::convert::Into<#p::std::string::String>,
                ) -> #p::RemoteBuilder<#self_ty, #pool<#self_ty, #p::RemotePool<#self_ty>>> {
                    #p::remote_builder(alias, |inner| #pool {
                        inner,
                        worker: #p::core::marker::PhantomData,
                    })
                }
            }

            #[allow(dead_code, private_interfaces)]
            impl<__W, __F> #pool<__W, __F>
            where
                __W: #p::Worker + #p::Is<#self_ty>,
                __F: #p::Face<__W>,
            {
                #(#proxies)*
            }

            #[automatically_derived]
            impl<__W: #p::Worker, __F> #p::core::ops::Deref for #pool<__W, __F> {
                type Target = __F;

                fn deref(&self) -> &Self::Target {
                    &self.inner
                }
            }

            #[automatically_derived]
            impl<__W: #p::Worker, __F: #p::core::fmt::Debug> #p::core::fmt::Debug for #pool<__W, __F> {
                fn fmt(&self, f: &mut #p::core::fmt::Formatter<'_>) -> #p::core::fmt::Result {
                    #p::core::fmt::Debug::fmt(&self.inner, f)
                }
            }
        }
    }

    /// `pub fn sieve(&self, start: u64, end: u64) -> Pending<Vec<u64>>`
    fn pool_proxy(&self, index: usize, method: &Method) -> TokenStream {
        let p = &self.p;
        let ident = method.ident;
        let docs = &method.docs;
        let separator = (!docs.is_empty()).then(|| quote!(#[doc = ""]));
        let note = format!(
            " Proxy of `{}::{}`: encodes the arguments, queues the call for a worker and returns \
             its handle at once (await it, or `wait()`; dropping it cancels the call).",
            self.type_name, method.name
        );
        let Parts {
            params,
            encoded,
            ret,
            decode,
            index,
        } = self.parts(index, method);
        let submit = respan(quote!(#p::submit_shared), ident.span());
        quote! {
            #(#docs)*
            #separator
            #[doc = #note]
            pub fn #ident(
                &self,
                #(#params),*
            ) -> #p::Pending<#ret> {
                #submit(
                    &self.inner,
                    #index,
                    #encoded,
                    |__bytes| #decode,
                )
            }
        }
    }

    /// What both faces' proxies of `method` are made of: their parameters, the encoded
    /// arguments (a tuple of borrows, spanned at the method so that rustc reports a bad
    /// argument type there), the return type, its decoder and the method's index.
    fn parts(&self, index: usize, method: &Method) -> Parts {
        let p = &self.p;
        let params = method
            .args
            .iter()
            .map(|arg| {
                let ident = arg_ident(arg);
                let ty = &arg.ty;
                quote!(#ident: #ty)
            })
            .collect();
        let encoded = method.args.iter().map(|arg| {
            let ident = arg_ident(arg);
            match arg.shape {
                Shape::Bytes { by_ref: false } => quote!(#p::Bytes::new(&#ident)),
                Shape::Bytes { by_ref: true } => quote!(#p::Bytes::new(#ident)),
                _ => quote!(&#ident),
            }
        });
        let ret = match &method.ret.ty {
            Some(ty) => quote!(#ty),
            None => quote!(()),
        };
        let decode = match (&method.ret.ty, method.ret.bytes) {
            (_, true) => quote! {
                #p::core::result::Result::map(
                    #p::decode::<#p::ByteBuf>(__bytes),
                    #p::ByteBuf::into_vec,
                )
            },
            _ => quote!(#p::decode::<#ret>(__bytes)),
        };
        Parts {
            params,
            encoded: respan(quote!(&(#(#encoded,)*)), method.ident.span()),
            ret,
            decode,
            index: method_index(index),
        }
    }

    /// `impl Worker for Primes`: the method table, dispatch, decoders and lifecycle hooks.
    fn worker_impl(&self) -> TokenStream {
        let Generator {
            p,
            self_ty,
            args,
            ret,
            ..
        } = self;
        let names = self.input.methods.iter().map(|method| &method.name);
        let hooks = [
            HookKind::Setup,
            HookKind::Teardown,
            HookKind::CheckEnvironment,
        ]
        .into_iter()
        .filter_map(|kind| self.input.hooks.iter().find(|hook| hook.kind == kind))
        .map(|hook| self.hook(hook));
        let methods = || self.input.methods.iter().enumerate();
        let dispatch = methods().map(|(index, method)| {
            let index = method_index(index);
            let ident = method.ident;
            let decoded = method.args.iter().map(|arg| self.decoded(arg));
            let passed = method.args.iter().enumerate().map(|(i, arg)| {
                let field = Index::from(i);
                match arg.shape {
                    Shape::Value => quote!(__a.#field),
                    Shape::Ref(_) | Shape::Slice(_) | Shape::Str => quote!(&__a.#field),
                    Shape::Bytes { by_ref: false } => quote!(#p::ByteBuf::into_vec(__a.#field)),
                    Shape::Bytes { by_ref: true } => quote!(&#p::ByteBuf::into_vec(__a.#field)),
                }
            });
            let call = quote!(<#self_ty>::#ident(self, #(#passed),*));
            let write = match (&method.ret.ty, method.ret.bytes) {
                (_, true) => quote!(let __r = #call; __ret.write(#p::Bytes::new(&__r))),
                (Some(ty), false) => quote!(let __r = #call; __ret.write::<#ty>(&__r)),
                (None, false) => quote!(#call; __ret.write(&())),
            };
            let decode = respan(quote!(#p::decode(__args)), ident.span());
            quote! {
                #index => {
                    let __a: (#(#decoded,)*) = #decode?;
                    #write
                }
            }
        });
        let decode_args = methods().map(|(index, method)| {
            let index = method_index(index);
            let variant = &method.variant;
            let decoded = method.args.iter().map(|arg| self.decoded(arg));
            let fields = method.args.iter().enumerate().map(|(i, arg)| {
                let ident = arg_ident(arg);
                let field = Index::from(i);
                match arg.shape {
                    Shape::Bytes { .. } => quote!(#ident: #p::ByteBuf::into_vec(__a.#field)),
                    _ => quote!(#ident: __a.#field),
                }
            });
            let decode = respan(quote!(#p::decode(__bytes)), method.ident.span());
            quote! {
                #index => {
                    let __a: (#(#decoded,)*) = #decode?;
                    #p::core::result::Result::Ok(#args::#variant { #(#fields),* })
                }
            }
        });
        let decode_return = methods().map(|(index, method)| {
            let index = method_index(index);
            let variant = &method.variant;
            let value = match (&method.ret.ty, method.ret.bytes) {
                (_, true) => quote!(#p::ByteBuf::into_vec(#p::decode::<#p::ByteBuf>(__bytes)?)),
                (Some(ty), false) => quote!(#p::decode::<#ty>(__bytes)?),
                (None, false) => quote!(#p::decode::<()>(__bytes)?),
            };
            quote! {
                #index => #p::core::result::Result::Ok(#ret::#variant(#value)),
            }
        });
        let interface = self.interface();
        let u8 = quote!(#p::core::primitive::u8);
        let u32 = quote!(#p::core::primitive::u32);
        quote! {
            #[automatically_derived]
            impl #p::Worker for #self_ty {
                type Args = #args;
                type Return = #ret;

                const METHODS: &'static [&'static #p::core::primitive::str] = &[#(#names),*];

                fn interface() -> #p::std::borrow::Cow<'static, #p::core::primitive::str> {
                    #p::std::borrow::Cow::Borrowed(#interface)
                }

                #(#hooks)*

                fn dispatch(
                    &mut self,
                    __method: #u32,
                    __args: &[#u8],
                    __ret: &mut #p::ReturnSlot<'_>,
                ) -> #p::core::result::Result<(), #p::WireError> {
                    match __method {
                        #(#dispatch)*
                        _ => #p::core::result::Result::Err(#p::WireError::UnknownMethod(__method)),
                    }
                }

                fn decode_args(
                    __method: #u32,
                    __bytes: &[#u8],
                ) -> #p::core::result::Result<#args, #p::WireError> {
                    match __method {
                        #(#decode_args)*
                        _ => #p::core::result::Result::Err(#p::WireError::UnknownMethod(__method)),
                    }
                }

                fn decode_return(
                    __method: #u32,
                    __bytes: &[#u8],
                ) -> #p::core::result::Result<#ret, #p::WireError> {
                    match __method {
                        #(#decode_return)*
                        _ => #p::core::result::Result::Err(#p::WireError::UnknownMethod(__method)),
                    }
                }
            }
        }
    }

    /// `Primes;sieve(u64,u64)->Vec<u64>;...`: what `Worker::interface` returns, the wire's
    /// view of the methods (the types arguments are decoded as, and returns), without spaces.
    fn interface(&self) -> String {
        let compact = |tokens: TokenStream| {
            tokens
                .to_string()
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect::<String>()
        };
        let mut text = self.type_name.clone();
        for method in &self.input.methods {
            // As decoded: a reference or a slice travels as the owned value.
            let args: Vec<String> = method
                .args
                .iter()
                .map(|arg| match &arg.shape {
                    Shape::Bytes { .. } => "bytes".to_owned(),
                    Shape::Str => "String".to_owned(),
                    Shape::Slice(elem) => format!("Vec<{}>", compact(quote!(#elem))),
                    Shape::Ref(ty) => compact(quote!(#ty)),
                    Shape::Value => {
                        let ty = &arg.ty;
                        compact(quote!(#ty))
                    }
                })
                .collect();
            let ret = match (&method.ret.ty, method.ret.bytes) {
                (_, true) => "bytes".to_owned(),
                (Some(ty), false) => compact(quote!(#ty)),
                (None, false) => "()".to_owned(),
            };
            text.push_str(&format!(";{}({})->{}", method.name, args.join(","), ret));
        }
        text
    }

    /// `fn setup(&mut self) { <Primes>::setup(self) }`, and the like.
    fn hook(&self, hook: &Hook) -> TokenStream {
        let Generator { p, self_ty, .. } = self;
        let ident = &hook.original.sig.ident;
        match hook.kind {
            HookKind::Setup => quote! {
                fn setup(&mut self) {
                    <#self_ty>::#ident(self)
                }
            },
            HookKind::Teardown => quote! {
                fn teardown(&mut self) {
                    <#self_ty>::#ident(self)
                }
            },
            HookKind::CheckEnvironment => {
                // A wrong return type is reported at the user's return type.
                let span = match &hook.original.sig.output {
                    syn::ReturnType::Type(_, ty) => ty.span(),
                    syn::ReturnType::Default => ident.span(),
                };
                let call = quote_spanned!(span=> <#self_ty>::#ident(self));
                quote! {
                    fn check_environment(
                        &self,
                    ) -> #p::std::vec::Vec<#p::std::string::String> {
                        #call
                    }
                }
            }
        }
    }

    /// `const _: () = { fn __check() { assert_arg::<u64>(); ... } };`: each argument and
    /// return type must be serde-serializable; rustc's error points at the user's type.
    fn checks(&self) -> TokenStream {
        let p = &self.p;
        let mut asserts = Vec::new();
        for method in &self.input.methods {
            for arg in &method.args {
                let ty = match &arg.shape {
                    Shape::Value => &arg.ty,
                    Shape::Ref(ty) | Shape::Slice(ty) => ty,
                    Shape::Str | Shape::Bytes { .. } => continue,
                };
                asserts.push(quote_spanned!(arg.original.ty.span()=> #p::assert_arg::<#ty>();));
            }
            if let (Some(ty), false) = (&method.ret.ty, method.ret.bytes) {
                let span = method
                    .ret
                    .original
                    .map_or_else(Span::call_site, |ty| ty.span());
                asserts.push(quote_spanned!(span=> #p::assert_return::<#ty>();));
            }
        }
        if asserts.is_empty() {
            return TokenStream::new();
        }
        quote! {
            const _: () = {
                #[allow(dead_code)]
                fn __check() {
                    #(#asserts)*
                }
            };
        }
    }

    /// The type an argument is decoded as, in the tuple the worker decodes.
    fn decoded(&self, arg: &Arg) -> TokenStream {
        let p = &self.p;
        match &arg.shape {
            Shape::Bytes { .. } => quote!(#p::ByteBuf),
            _ => self.owned(arg),
        }
    }

    /// The owned type an argument is kept as in `{Type}Args`.
    fn owned(&self, arg: &Arg) -> TokenStream {
        let p = &self.p;
        match &arg.shape {
            Shape::Value => {
                let ty = &arg.ty;
                quote!(#ty)
            }
            Shape::Ref(ty) => quote!(#ty),
            Shape::Slice(elem) => quote!(#p::std::vec::Vec<#elem>),
            Shape::Str => quote!(#p::std::string::String),
            Shape::Bytes { .. } => quote!(#p::std::vec::Vec<#p::core::primitive::u8>),
        }
    }
}

/// See [`Generator::parts`].
struct Parts {
    params: Vec<TokenStream>,
    encoded: TokenStream,
    ret: TokenStream,
    decode: TokenStream,
    index: Literal,
}

/// The name of a checked argument (every argument that reaches generation has one).
fn arg_ident<'a>(arg: &Arg<'a>) -> &'a Ident {
    arg.ident
        .expect("valid.rs drops methods with pattern arguments")
}

/// `tokens`, every one of them spanned at `span`: errors rustc finds in generated code then
/// point at the user's code that caused them.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                let mut respanned = Group::new(group.delimiter(), respan(group.stream(), span));
                respanned.set_span(span);
                token = TokenTree::Group(respanned);
            }
            token.set_span(span);
            token
        })
        .collect()
}

/// `0u32`
fn method_index(index: usize) -> Literal {
    Literal::u32_suffixed(u32::try_from(index).expect("fewer than 2^32 methods"))
}
